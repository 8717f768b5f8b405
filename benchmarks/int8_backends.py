"""Which int8 backend `resnetkit export --int8` uses, decided by measurement (issue 16): ONNX Runtime's static QDQ
quantization (what resnetkit ships) against torchao's PT2E `X86InductorQuantizer` + `torch.compile` with freezing,
both calibrated on the same 512 CIFAR-10 training images, both against the eager fp32 model in the same process.

    python benchmarks/int8_backends.py --data-dir ../shared/data/cifar-10-batches-bin [--threads 2]

Prints one JSON line per (model, backend): top-1 on all 10,000 test images (ResNet-20, shipped weights), the
model-only images/s over the test set (inputs already normalised, batch 250), images/s at ResNet-50 224 px batch 8
(random weights), and the one-off preparation time (quantization, compile). Needs `pip install torchao`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from resnetkit.data.cifar import load_cifar
from resnetkit.models import create_model
from resnetkit.runtime import load_model
from resnetkit.workflows.deploy import export_checkpoint


def rate(run, batches: list[torch.Tensor], seconds: float = 4.0) -> float:
    """Images/s of `run` over `batches`, repeated for at least `seconds` after one warm-up pass."""
    for x in batches[:2]:
        run(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x in batches:
            run(x)
            n += len(x)
    return n / (time.perf_counter() - start)


@torch.no_grad()
def top1(run, batches: list[torch.Tensor], labels: torch.Tensor) -> float:
    preds = torch.cat([torch.as_tensor(run(x)).argmax(1) for x in batches])
    return float((preds == labels).float().mean())


def torchao_int8(model: torch.nn.Module, calib: list[torch.Tensor], example: torch.Tensor):
    """PT2E static int8 as torchao documents it for x86: export, prepare with X86InductorQuantizer's default
    config (per-channel weights, symmetric), calibrate, convert, then torch.compile with freezing."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True
    graph = torch.export.export(model.eval(), (example,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return torch.compile(convert_pt2e(prepared))


def measure(name: str, make, test: list[torch.Tensor], labels: torch.Tensor | None) -> dict:
    t0 = time.perf_counter()
    try:
        run = make()
    except Exception as e:  # a backend that cannot quantize this model is a result too
        return {"backend": name, "error": f"{type(e).__name__}: {e}"}
    with torch.no_grad():
        run(test[0])  # a compile happens here
        prep = time.perf_counter() - t0
        row = {"backend": name, "prepare_s": round(prep, 1), "images_per_sec": round(rate(run, test), 1)}
        if labels is not None:
            row["top1"] = top1(run, test, labels)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="int8-backends-"))
    loaded = load_model("resnet20.rk_cifar10")
    pre = loaded.preprocessing
    test_ds = load_cifar(args.data_dir, "cifar10", "test", progress=False)
    train_ds = load_cifar(args.data_dir, "cifar10", "train", progress=False)
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0))[:512]
    calib = [pre.eval_batch(train_ds.images[order[i : i + 64]]) for i in range(0, 512, 64)]
    test = [pre.eval_batch(test_ds.images[i : i + 250]) for i in range(0, len(test_ds), 250)]
    onnx_file = tmp / "r20.int8.onnx"
    export_checkpoint("resnet20.rk_cifar10", "onnx", onnx_file, int8=True, data="cifar10", data_dir=args.data_dir)
    eager = loaded.model.float().eval()
    cases = {
        "eager fp32": lambda: eager,
        "onnxruntime int8 (QDQ, percentile)": lambda: load_model(onnx_file).model,
        "torchao pt2e int8 + compile(freezing)": lambda: torchao_int8(eager, calib, test[0]),
    }
    for name, make in cases.items():
        print(json.dumps({"model": "resnet20.rk_cifar10", "cpu": cpu, "threads": args.threads,
                          **measure(name, make, test, test_ds.labels)}), flush=True)  # fmt: skip
    torch.manual_seed(0)
    r50 = create_model("resnet50").eval()  # speed only: random weights (the ONNX file's are other random ones)
    x8 = [torch.randn(8, 3, 224, 224) for _ in range(4)]
    export_checkpoint(None, "onnx", tmp / "r50.int8.onnx", model="resnet50", int8=True, data="folder",
                      data_dir=str(Path(args.data_dir).parent / "cats_vs_dogs"), calib_size=64)  # fmt: skip
    cases = {
        "eager fp32": lambda: r50,
        "onnxruntime int8 (QDQ, percentile)": lambda: load_model(tmp / "r50.int8.onnx").model,
        "torchao pt2e int8 + compile(freezing)": lambda: torchao_int8(r50, x8[:2], x8[0]),
    }
    for name, make in cases.items():
        print(json.dumps({"model": "resnet50 224px batch 8", "cpu": cpu, "threads": args.threads,
                          **measure(name, make, x8, None)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
