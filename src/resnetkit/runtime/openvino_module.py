"""OpenVINO as a runtime: an IR file (`.xml` + `.bin`, from `resnetkit export --format openvino`) or an ONNX file
compiled for OpenVINO's CPU plugin, behind nn.Module's call like every other exported file.

Settings, each measured (benchmarks/RESULTS.md, "Runtimes"): inference precision f32 — on CPUs with AMX or
AVX-512 bf16 the plugin's default is bf16, which moved ResNet-20's logits by up to 0.07 (fp32 files must give
PyTorch's logits to 1e-4; int8 files run their quantized layers in int8 either way); one stream with the latency
hint (evaluation, prediction and the service send one batch at a time); torch's thread count for the plugin's
pool, and torch steps aside to one thread around the loop (runtime.host_threads), as for ONNX Runtime.

One ov.Core for the process (`core()`), never released. OpenVINO's CPU plugin gives the thread that compiles a
model its own signal stack (sigaltstack, for AMX's large signal frames) and restores the previous one when the
plugin goes; two Cores released in the order they were made (not the reverse) leave the thread on an unmapped
signal stack, and the next signal (Ctrl-C, the service's shutdown) kills the process with SIGSEGV (measured with
openvino 2026.4.1, Intel Xeon with AMX: tests/test_openvino.py's signal test).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.errors import ExportError, first_line
from resnetkit.export.metadata import META_KEY, ExportMeta
from resnetkit.export.openvino_writer import require


class OpenVinoModule(nn.Module):
    """A compiled OpenVINO model behind nn.Module's call: torch tensor in, torch tensor out (on the CPU)."""

    uses_own_threads = True  # runtime.host_threads: torch steps aside while it computes

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: the service's threads take turns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        with self._lock:
            self.request.infer({0: array})
            return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


@functools.cache
def core() -> Any:
    """The process's one ov.Core (module docstring: why never more than one)."""
    return require("openvino", "running OpenVINO models").Core()


def compile_for_cpu(model_or_path: Any, threads: int | None = None) -> Any:
    """The model compiled on OpenVINO's CPU plugin with resnetkit's settings (module docstring)."""
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
    }
    return core().compile_model(model_or_path, "CPU", config)


def read_ir(path: Path) -> tuple[Any, ExportMeta]:
    """The ov.Model of an IR file and its resnetkit metadata; one-line ExportErrors for what is wrong."""
    require("openvino", f"running {path.name}")
    if not path.with_suffix(".bin").is_file():
        raise ExportError(f"{path} is an OpenVINO IR without its weights: {path.with_suffix('.bin').name} is missing")
    try:
        model = core().read_model(str(path))
    except Exception as e:  # noqa: BLE001  an untrusted file: OpenVINO raises its own types
        raise ExportError(f"OpenVINO cannot read {path}: {first_line(e)}") from None
    if not model.has_rt_info([META_KEY]):
        raise ExportError(
            f"{path} was not made by resnetkit export: it has no resnetkit metadata (classes, preprocessing) in its "
            "rt_info"
        )
    return model, ExportMeta.from_json(str(model.get_rt_info([META_KEY]).astype(str)), str(path))
