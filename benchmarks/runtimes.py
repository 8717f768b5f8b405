"""Issue 32's table: every CPU form of each model side by side — eager PyTorch, resnetkit's fast path, ONNX Runtime,
OpenVINO and ExecuTorch, each fp32 and int8, and `--runtime auto` — measured in one run on one CPU, quiet and once
more with a CPU-bound process beside it (servers share machines).

    python benchmarks/runtimes.py run --cifar ../shared/data/cifar-10-batches-bin \
        --cvd ../shared/data/cats_vs_dogs --pruned runs/r56_pruned_r8 --cvd-model runs/cvd_linear \
        --out runs/runtimes > benchmarks/runtimes_<cpu>.jsonl
    python benchmarks/runtimes.py table benchmarks/runtimes_<cpu>.jsonl

`run` exports each model to every form (reusing files already in --out), then for each form calls `resnetkit bench
eval` (the whole CIFAR-10 test set end to end, and top-1 on all 10,000 images, against the standard eager fp32 loop
in the same call) and `resnetkit bench infer --batch-size 8` (throughput at batch 8 and batch-1 p50/p99, against
the eager model in the same call), in process, one JSON line each. `--busy` repeats it all with one CPU-bound
process (a single-thread matrix multiply loop) running beside; `--beside WHAT` measures only that pass, with a
CPU-bound process of your own (named WHAT in the table, e.g. a one-thread training run) beside instead. The
cats-vs-dogs fine-tune's top-1 is on its 1,000 validation photos (`resnetkit eval --split val`); ResNet-50 (224 px,
random weights, int8 calibrated on 512 cats-vs-dogs photos) is speed only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

FORMS = {  # form name -> (file suffix, export flags, --runtime)
    "fast path (fp32)": (None, [], None),
    "ONNX Runtime fp32": (".onnx", ["--format", "onnx"], "onnxruntime"),
    "ONNX Runtime int8": (".int8.onnx", ["--format", "onnx", "--int8"], "onnxruntime"),
    "OpenVINO fp32": (".xml", ["--format", "openvino"], None),
    "OpenVINO int8": (".int8.xml", ["--format", "openvino", "--int8"], None),
    "OpenVINO on the ONNX int8 file": (".int8.onnx", None, "openvino"),
    "ExecuTorch fp32": (".pte", ["--format", "executorch"], None),
    "ExecuTorch int8": (".int8.pte", ["--format", "executorch", "--int8"], None),
    "auto fp32 (.onnx)": (".onnx", None, "auto"),
    "auto int8 (.int8.onnx)": (".int8.onnx", None, "auto"),
}
BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(768, 768)\nwhile True: a @ a"


def rk(*args: str) -> str:
    """`resnetkit ARGS` in this process; its stdout."""
    from resnetkit.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["-q", *args])
    if code != 0:
        raise SystemExit(f"resnetkit {' '.join(args)} exited {code}")
    return out.getvalue()


def models(a: argparse.Namespace) -> list[dict]:
    """(name, source, calibration data, whether bench eval runs on CIFAR-10)."""
    c10 = ["--data", "cifar10", "--data-dir", a.cifar]
    cvd = ["--data", "folder", "--data-dir", a.cvd]
    found = [
        {"name": "resnet20", "source": ["--checkpoint", "resnet20.rk_cifar10"], "calib": c10, "eval": "cifar"},
        {"name": "resnet56", "source": ["--checkpoint", "resnet56.rk_cifar10"], "calib": c10, "eval": "cifar"},
    ]
    # pruned with --round-to 8, and with 1 (widths such as 9, 17, 31: what rounding is measured against)
    for name, run in (("resnet56-pruned-r8", a.pruned), ("resnet56-pruned-r1", a.pruned_r1)):
        if run:
            found.append({"name": name, "source": ["--checkpoint", run], "calib": c10, "eval": "cifar"})
    found.append({"name": "resnet50", "source": ["--model", "resnet50"], "calib": cvd, "eval": None})
    if a.cvd_model:
        found.append({"name": "cats-vs-dogs", "source": ["--checkpoint", a.cvd_model], "calib": cvd, "eval": "cvd"})
    return [m for m in found if not a.models or m["name"] in a.models]


def export_all(a: argparse.Namespace, m: dict, out: Path) -> None:
    for form, (suffix, flags, _) in FORMS.items():
        file = out / f"{m['name']}{suffix}" if suffix else None
        if flags is None or file is None or file.exists():
            continue
        calib = m["calib"] if "--int8" in flags else []
        print(f"# export {m['name']} {form}", file=sys.stderr, flush=True)
        rk("export", *m["source"], *flags, *calib, "--out", str(file))


def measure(a: argparse.Namespace, m: dict, out: Path, load: str) -> None:
    for form, (suffix, _, runtime) in FORMS.items():
        if a.forms and form not in a.forms:
            continue
        src = str(out / f"{m['name']}{suffix}") if suffix else m["source"][1]
        if suffix and not Path(src).exists():
            continue
        if m["source"][0] == "--model" and not suffix:
            continue  # an untrained architecture's fast path: `bench infer --model` below
        rt = ["--runtime", runtime] if runtime else []
        record = {"model": m["name"], "form": form, "load": load, "file": src if suffix else None}
        if suffix:
            files = [Path(src)] + ([Path(src).with_suffix(".bin")] if src.endswith(".xml") else [])
            record["size_mb"] = sum(f.stat().st_size for f in files) / 1e6
        if m["eval"] == "cifar":
            record["eval"] = last_json(rk("bench", "eval", "--data-dir", a.cifar, "--checkpoint", src, *rt))
        elif m["eval"] == "cvd":
            record["top1"] = json.loads(rk("eval", "--checkpoint", src, *rt, "--data", "folder", "--data-dir", a.cvd,
                                           "--split", "val", "--json"))["top1"]  # fmt: skip
        infer = ["bench", "infer", "--batch-size", "8", "--seconds", str(a.seconds)]
        record["infer"] = last_json(rk(*infer, "--checkpoint", src, *rt))
        print(json.dumps(record), flush=True)
    if m["source"][0] == "--model":
        record = {"model": m["name"], "form": "fast path (fp32)", "load": load}
        record["infer"] = last_json(rk("bench", "infer", "--model", m["source"][1], "--batch-size", "8",
                                       "--seconds", str(a.seconds)))  # fmt: skip
        record["infer_b1"] = last_json(rk("bench", "infer", "--model", m["source"][1], "--batch-size", "1",
                                          "--seconds", str(a.seconds)))  # fmt: skip
        print(json.dumps(record), flush=True)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def run(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    wanted = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in wanted})
    print(json.dumps({"cpu": name, "flags": flags, "threads": __import__("torch").get_num_threads()}), flush=True)
    chosen = models(a)
    for m in chosen:
        export_all(a, m, out)
    if a.export_only:
        return
    loads = ("busy",) if a.beside else ("quiet", "busy") if a.busy else ("quiet",)
    if a.beside:
        print(json.dumps({"beside": a.beside}), flush=True)
    for load in loads:
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" and not a.beside else None
        try:
            for m in chosen:
                measure(a, m, out, load)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


def cells(path: str) -> tuple[dict, dict]:
    """(cpu record, {(load, model): {form: row}}) of a run's JSON lines."""
    cpu, rows = {}, defaultdict(dict)
    for line in Path(path).read_text().splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "cpu" in r or "beside" in r:
            cpu.update(r)
            continue
        rows[(r["load"], r["model"])][r["form"]] = r
    return cpu, rows


def table(a: argparse.Namespace) -> None:
    cpu, rows = cells(a.jsonl)
    print(f"CPU: {cpu.get('cpu')} ({' '.join(cpu.get('flags', []))}), {cpu.get('threads')} threads\n")
    for load in ("quiet", "busy"):
        chosen = {k: v for k, v in rows.items() if k[0] == load}
        if not chosen:
            continue
        beside = cpu.get("beside", "one CPU-bound process: a one-thread matrix multiply loop")
        print(f"**{load}**" + (f" ({beside} beside; top-1: the quiet table)" if load == "busy" else "") + "\n")
        print("| model | form | size MB | top-1 | eval img/s (x eager) | batch-8 img/s (x eager) "
              "| batch-1 p50 / p99 ms (x eager p50) |\n|---|---|---:|---:|---:|---:|---:|")  # fmt: skip
        for (_, model), forms in chosen.items():
            for line in model_lines(model, forms, show_top1=load == "quiet"):
                print(line)
        print()


def model_lines(model: str, forms: dict, show_top1: bool = True) -> list[str]:
    lines, eager = [], None
    best = max((r["infer"]["images_per_sec"], f) for f, r in forms.items())[1]
    for form, r in forms.items():
        ev, inf = r.get("eval"), r["infer"]
        x = inf["extra"] or {}
        if eager is None:
            top = f"{100 * ev['extra']['baseline_top1']:.2f}%" if ev and show_top1 else "—"
            e_ips = f"{ev['baseline_images_per_sec']:.0f} (1.00x)" if ev else ""
            p50 = x.get("baseline_p50_ms") or (r.get("infer_b1") or {}).get("baseline_latency_ms")
            p99 = x.get("baseline_p99_ms")
            lat = f"{p50:.2f}" + (f" / {p99:.2f}" if p99 else "") + " (1.00x)" if p50 else ""
            lines.append(f"| {model} | eager PyTorch fp32 | | {top} | {e_ips} | "
                         f"{inf['baseline_images_per_sec']:.0f} (1.00x) | {lat} |")  # fmt: skip
            eager = True
        top = f"{100 * ev['extra']['top1']:.2f}%" if ev else f"{100 * r['top1']:.2f}%" if "top1" in r else "—"
        top = top if show_top1 else "—"
        e_ips = f"{ev['images_per_sec']:.0f} ({ev['ratio']:.2f}x)" if ev else ""
        if "p50_ms" in x:
            lat = f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f} ({x['baseline_p50_ms'] / x['p50_ms']:.2f}x)"
        elif r.get("infer_b1"):
            b1 = r["infer_b1"]
            lat = f"{b1['latency_ms']:.2f} (mean) ({b1['ratio']:.2f}x)"
        else:
            lat = ""
        size = f"{r['size_mb']:.2f}" if r.get("size_mb") else ""
        mark = " **(fastest at batch 8)**" if form == best else ""
        lines.append(f"| {model} | {form}{mark} | {size} | {top} | {e_ips} | {inf['images_per_sec']:.0f} "
                     f"({inf['ratio']:.2f}x) | {lat} |")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cifar", required=True)
    r.add_argument("--cvd", required=True)
    r.add_argument("--pruned", help="the pruned, fine-tuned ResNet-56 run (resnetkit prune --round-to 8)")
    r.add_argument("--pruned-r1", help="ResNet-56 pruned to 50%% MACs with --round-to 1 (speed; top-1 as trained)")
    r.add_argument("--cvd-model", help="a cats-vs-dogs fine-tune (run folder)")
    r.add_argument("--out", default="runs/runtimes")
    r.add_argument("--busy", action="store_true", help="also measure with a CPU-bound process beside")
    r.add_argument(
        "--beside",
        metavar="WHAT",
        help="measure only the busy pass, with WHAT (a CPU-bound process "
        "started by you, e.g. a one-thread training run) beside instead of the matrix-multiply loop",
    )
    r.add_argument("--seconds", type=float, default=2.0, help="bench infer's timing window per side")
    r.add_argument("--models", nargs="*", help="only these (resnet20 resnet56 resnet56-pruned-r8 resnet50 ...)")
    r.add_argument("--forms", nargs="*", help="only these forms")
    r.add_argument("--export-only", action="store_true", help="write the files, measure nothing")
    t = sub.add_parser("table")
    t.add_argument("jsonl")
    a = p.parse_args()
    run(a) if a.cmd == "run" else table(a)


if __name__ == "__main__":
    main()
