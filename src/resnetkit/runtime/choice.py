"""`--runtime auto` for ONNX files: which of ONNX Runtime and OpenVINO runs this file faster on this CPU, measured
once and remembered, as training's bf16 decision is (engine.device.bf16_speedup).

No single runtime wins everywhere: on the AMD EPYC (Zen 5) ONNX Runtime's int8 ran 1.3-1.7x OpenVINO's (NNCF) while
OpenVINO's fp32 was 1.04-1.24x ONNX Runtime's (issue 32's measurements); on the Intel Xeon with AMX this measurement
chose OpenVINO for the int8 ResNet-56 and cats-vs-dogs files and ONNX Runtime for the int8 ResNet-20 (session 16,
a shared machine; benchmarks/RESULTS.md, "Runtimes"); the winner also depends on the load beside it. So the choice
is a measurement: both runtimes load the file, run it interleaved at batch 1 and at batch BATCH on random inputs of
its input size, and the one with the lower geometric mean of the two median times wins. Kept in the cache folder
under the CPU's name and flags, the settings, the thread count, both runtimes' versions and the file's sha256; a
CPU, a thread count or a file not seen before is measured again.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.engine.device import cpu_signature
from resnetkit.files import atomic_write, cache_dir
from resnetkit.hardware import cpu_info
from resnetkit.weights.download import sha256_file

log = logging.getLogger(__name__)
CACHE_FILE = "runtime_choice.json"
# part of the key: a choice measured under other session settings (ORT's spinning, OpenVINO's hints) is measured
# again, not reused
SETTINGS_VERSION = 2
BATCH = 16  # the larger of the two measured batches (evaluation and the service's dynamic batches)
ROUNDS = 3
# int8 kernels each runtime has on this CPU (VNNI, AMX): CPUs that share a model name differ in them
INT8_FLAGS = ("avx512_vnni", "amx_int8")


Loader = Callable[[Path], nn.Module]


def choose_onnx_runtime(path: Path, size: int, loaders: dict[str, Loader]) -> str:
    """ "onnxruntime" or "openvino" (the keys of `loaders`, each loading the file on its runtime) for the ONNX file
    `path` (inputs N x 3 x size x size) on this CPU."""
    try:
        importlib.import_module("openvino")
    except ImportError:
        return "onnxruntime"  # nothing to choose between (the openvino extra is not installed)
    key = cache_key(path)
    cache = cache_dir() / CACHE_FILE
    known = _read(cache)
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("runtime") in ("onnxruntime", "openvino"):
        return str(entry["runtime"])
    entry = measure({name: load(path) for name, load in loaders.items()}, size)
    log.info("runtime for %s on this CPU: %s (%s)", path.name, entry["runtime"], entry)
    known[key] = entry
    try:
        atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1) + "\n"))
    except OSError:
        pass  # a read-only home: measure again next time
    return str(entry["runtime"])


def cache_key(path: Path) -> str:
    versions = " ".join(f"{m} {_version(m)}" for m in ("onnxruntime", "openvino"))
    settings = f"settings {SETTINGS_VERSION} | threads {torch.get_num_threads()}"
    int8 = [f for f in INT8_FLAGS if f in cpu_info()[1]]
    return f"{' '.join([cpu_signature(), *int8])} | {settings} | {versions} | {sha256_file(path)}"


def measure(modules: dict[str, nn.Module], size: int) -> dict[str, Any]:
    """Median batch-1 and batch-BATCH times (ms) of each runtime's module, interleaved, and the winner. torch runs
    on one thread meanwhile: the runtimes compute on their own pools (runtime.exported.host_threads)."""
    inputs = {b: torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0)) for b in (1, BATCH)}
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in inputs} for name in modules}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for module in modules.values():  # warm-up: first calls allocate and pick kernels
                for x in inputs.values():
                    module(x)
            for _ in range(ROUNDS):
                for name, module in modules.items():
                    for b, x in inputs.items():
                        times[name][b].append(_ms(module, x, repeats=3 if b == 1 else 1))
    finally:
        torch.set_num_threads(threads)
    score = {name: math.sqrt(statistics.median(t[1]) * statistics.median(t[BATCH])) for name, t in times.items()}
    entry: dict[str, Any] = {"runtime": min(score, key=score.__getitem__)}
    for name, t in times.items():
        entry[f"{name}_batch1_ms"] = round(statistics.median(t[1]), 4)
        entry[f"{name}_batch{BATCH}_ms"] = round(statistics.median(t[BATCH]), 4)
    return entry


def _ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        module(x)
    return 1000 * (time.perf_counter() - start) / repeats


def _read(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "-"
