"""The README/RESULTS deploy table from the JSON lines of benchmarks/deploy.sh.

    python benchmarks/deploy_table.py deploy.jsonl

Per model: the eager fp32 checkpoint (the baseline every line measured in its own process), resnetkit's fast path,
ONNX fp32 and ONNX int8: size on disk, top-1 on the 10,000 CIFAR-10 test images, whole-test-set evaluation
images/s (`bench eval`, end to end, first pass), throughput at the `bench infer` batch size and batch-1 p50 latency
(`bench infer`), each with its ratio to the eager baseline of the same line.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def form_of(name: str) -> tuple[str, str]:
    """(model, form) of a benchmarked checkpoint name: resnet20.rk_cifar10, runs/deploy/resnet20.int8.onnx, ..."""
    stem = Path(name).name
    model = stem.split(".")[0]
    if stem.endswith(".int8.onnx"):
        return model, "ONNX Runtime int8"
    if stem.endswith(".onnx"):
        return model, "ONNX Runtime fp32"
    return model, "fast path (fp32)"


def num(value: float | None, ratio: float | None, fmt: str) -> str:
    return "" if value is None else f"{value:{fmt}} ({ratio:.2f}x)"


def main(path: str) -> None:
    cells: dict[tuple[str, str], dict] = defaultdict(dict)
    for line in Path(path).read_text().splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        x = r.get("extra") or {}
        key = form_of(r["model"])
        eager = cells[(key[0], "eager PyTorch fp32")]
        if r["bench"] == "eval":
            cells[key].update(top1=x["top1"], eval_ips=r["images_per_sec"], eval_x=r["ratio"])
            eager.update(top1=x["baseline_top1"], eval_ips=r["baseline_images_per_sec"], eval_x=1.0)
        elif "p50_ms" in x:
            cells[key].update(size=x["file_mb"], ips=r["images_per_sec"], ips_x=r["ratio"], b=r["batch_size"],
                              p50=x["p50_ms"], p50_x=x["baseline_p50_ms"] / x["p50_ms"])  # fmt: skip
            eager.update(ips=r["baseline_images_per_sec"], ips_x=1.0, b=r["batch_size"], p50=x["baseline_p50_ms"],
                         p50_x=1.0)  # fmt: skip
            if key[1] == "fast path (fp32)":
                eager.update(size=x["file_mb"])
        elif r["batch_size"] == 1:  # `bench infer --model`: an untrained model, mean batch-1 latency
            cells[key].update(p50=r["latency_ms"], p50_x=r["ratio"])
        else:
            cells[key].update(ips=r["images_per_sec"], ips_x=r["ratio"], b=r["batch_size"])
            eager.update(ips=r["baseline_images_per_sec"], ips_x=1.0, b=r["batch_size"])
    print("| model | form | size MB | top-1 (10k test) | eval img/s (x eager) | img/s at batch B (x eager) "
          "| batch-1 p50 ms (x eager) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    order = ["eager PyTorch fp32", "fast path (fp32)", "ONNX Runtime fp32", "ONNX Runtime int8"]
    for (model, form), c in sorted(cells.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        print(f"| {model} | {form} | {'' if c.get('size') is None else format(c['size'], '.2f')} | "
              + (f"{100 * c['top1']:.2f}%" if "top1" in c else "—") + " | "
              + num(c.get("eval_ips"), c.get("eval_x"), ".0f") + " | "
              + (num(c.get("ips"), c.get("ips_x"), ".0f") + f" B={c['b']}" if "ips" in c else "") + " | "
              + num(c.get("p50"), c.get("p50_x"), ".2f") + " |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
