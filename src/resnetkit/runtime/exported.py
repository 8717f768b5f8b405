"""Exported files as models. An ONNX file runs in an ONNX Runtime session (thread count = torch's) or on OpenVINO
(`--runtime`; "auto" measures which is faster here), an OpenVINO IR on OpenVINO, a `.pt2` file as torch.export's
module, an ExecuTorch `.pte` in ExecuTorch's runtime; each is an `nn.Module` mapping a normalized float32 NCHW batch
to logits, so evaluation, prediction, reports and benchmarks use them as they use a checkpoint's model. The format
is read from the file's contents, never from a flag."""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, RUNTIMES
from resnetkit.errors import ExportError, first_line
from resnetkit.export import META_FILE, META_KEY, PIXEL_INPUT, ExportMeta
from resnetkit.export.deps import require
from resnetkit.transforms import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """An exported file ready to run. `named` is False for an ONNX file without resnetkit metadata: its classes
    are numbers until the data names them."""

    module: nn.Module
    preprocessing: Preprocessing
    classes: list[str]
    meta: ExportMeta | None
    runtime: str  # "onnxruntime" | "openvino" | "torch.export" | "executorch"
    named: bool = True


RUNTIME_ENV = "RESNETKIT_RUNTIME"  # the default for ONNX files instead of "auto" (tests pin it)
FILE_NAMES = {
    "onnx": "an ONNX file",
    "pt2": "a torch.export .pt2 file",
    "openvino": "an OpenVINO IR",
    "executorch": "an ExecuTorch .pte program",
}
FILE_RUNTIMES = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "pt2": ("torch.export",)}


def file_format(path: str | Path) -> str | None:
    """'onnx', 'pt2', 'openvino' (an IR's .xml), 'executorch' (a .pte program), or None for anything else (a
    checkpoint, a weights file, a folder), from the contents."""
    p = Path(path)
    if not p.is_file():
        return None
    with open(p, "rb") as f:
        start = f.read(256)
    if start[4:8] == b"ET12":  # an ExecuTorch program: a flatbuffer with the file identifier "ET12"
        return "executorch"
    if start.lstrip().startswith(b"<?xml") or start.lstrip().startswith(b"<net"):
        return "openvino" if b"<net" in start else None
    if zipfile.is_zipfile(p):  # torch.save checkpoints are zip archives too; .pt2 ones hold `archive_format`
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "pt2" if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names) else None
    with open(p, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return None
    # an ONNX ModelProto opens with its ir_version (protobuf field 1, a varint: byte 0x08)
    return "onnx" if head[:1] == b"\x08" or p.suffix.lower() == ".onnx" else None


def load_exported(path: str | Path, runtime: str | None = None) -> LoadedModel:
    """The model in an exported file on `runtime` ("auto": the file's own; for ONNX files the faster one on this
    CPU), with its preprocessing and classes (one-line ExportErrors otherwise)."""
    fmt = file_format(path)
    if fmt is None:
        raise ExportError(f"{path} is not an exported model (.onnx, .pt2, OpenVINO .xml or ExecuTorch .pte)")
    runtime = check_runtime(fmt, runtime, path)
    if fmt == "pt2":
        return _load_pt2(Path(path))
    if fmt == "onnx":
        return _load_onnx(Path(path), runtime)
    if fmt == "openvino":
        return _load_ir(Path(path))
    from resnetkit.runtime.executorch_module import load_pte

    module, meta = load_pte(Path(path))
    return LoadedModel(module, meta.preprocessing_obj(), list(meta.classes), meta, "executorch")


def check_runtime(fmt: str, runtime: str | None, path: str | Path) -> str:
    """The runtime a file of format `fmt` runs on when `runtime` is asked for: a one-line ExportError where it
    cannot ("auto" stays "auto" for ONNX files: decided when loaded). None: $RESNETKIT_RUNTIME for ONNX files
    where it is set, else "auto"."""
    if runtime is None:
        runtime = os.environ.get(RUNTIME_ENV) or "auto" if fmt == "onnx" else "auto"
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    own = FILE_RUNTIMES.get(fmt, (fmt,))
    if runtime == "auto":
        return "auto" if len(own) > 1 else own[0]
    if runtime not in own:
        raise ExportError(
            f"{path} is {FILE_NAMES.get(fmt, fmt)}, which runs on {' or '.join(own)}, not {runtime}: export the "
            f"model with --format {'onnx' if runtime == 'onnxruntime' else runtime} for that runtime"
        )
    return runtime


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind nn.Module's call: torch tensor in, torch tensor out (on the CPU)."""

    uses_own_threads = True  # host_threads: torch steps aside while it computes

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        batch = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None  # foreign files may fix it

    # A large batch of small images runs as chunks of at most this many input values (64 CIFAR images), at least
    # MIN_CHUNK images each: ORT's int8 convolutions take the whole batch at once (NHWC), and a chunk's activations
    # stay in the cores' caches. Measured (Intel Xeon, 2 vCPUs, interleaved, issue 32): int8 ResNet-20 ~12% more
    # images/s in chunks of 64 than in calls of 250 with a training beside, 2-5% idle, the same logits; fp32 no
    # slower. Larger images (fewer than MIN_CHUNK fit in a chunk) run whole.
    CHUNK_VALUES = 64 * 3 * 32 * 32
    MIN_CHUNK = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        n = len(x)
        if self.fixed_batch is not None and n != self.fixed_batch:  # chunks of the fixed size, the last zero-padded
            step = self.fixed_batch
            x = torch.cat([x, x.new_zeros((-n % step, *x.shape[1:]))])
            return torch.cat([self._run(x[i : i + step]) for i in range(0, len(x), step)])[:n]
        step = self.CHUNK_VALUES // max(1, x[0].numel()) if n and self.fixed_batch is None else n
        if step < self.MIN_CHUNK or n <= step:
            return self._run(x)
        return torch.cat([self._run(x[i : i + step]) for i in range(0, n, step)])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x.numpy()})[0])


@contextlib.contextmanager
def host_threads(model: nn.Module) -> Iterator[None]:
    """Around a loop that feeds `model`: for a model on a runtime with its own thread pool (ONNX Runtime, OpenVINO,
    ExecuTorch), torch's own work (preparing the batches) runs on one thread. ORT computes on its own pool (sized
    from torch's thread count when the file was loaded), and two pools spinning on the same cores stall each other:
    measured on the AMD EPYC (2 vCPUs), int8 ResNet-20 over the 10,000 CIFAR-10 test images took 1.81 s with torch
    on 2 threads, 1.11-1.19 s with torch on one."""
    if not getattr(model, "uses_own_threads", False):  # ONNX Runtime, OpenVINO and ExecuTorch modules
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ExportedProgramModule(nn.Module):
    """torch.export's module behind a plain nn.Module: an exported program is always in inference mode and
    refuses train()/eval(), which evaluation loops call."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        object.__setattr__(self, "program_module", program.module())  # not a submodule: eval() must not reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program_module(x)


def _load_pt2(path: Path) -> LoadedModel:
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # noqa: BLE001  an untrusted file: any parse failure means "not a .pt2 file"
        raise ExportError(f"cannot read {path} as a torch.export .pt2 file: {first_line(e)}") from None
    if not extra[META_FILE]:
        raise ExportError(f"{path} was not made by resnetkit export: it has no {META_FILE} (classes, preprocessing)")
    meta = ExportMeta.from_json(extra[META_FILE], str(path))
    module = ExportedProgramModule(program)
    return LoadedModel(module, meta.preprocessing_obj(), list(meta.classes), meta, "torch.export")


def _load_ir(path: Path) -> LoadedModel:
    from resnetkit.runtime.openvino_module import OpenVinoModule, compile_for_cpu, read_ir

    model, meta = read_ir(path)
    module = OpenVinoModule(compile_for_cpu(model))
    return LoadedModel(module, meta.preprocessing_obj(), list(meta.classes), meta, "openvino")


def _load_onnx(path: Path, runtime: str = "onnxruntime") -> LoadedModel:
    onnx = require("onnx", f"running {path.name}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  an untrusted file: any parse failure means "not ONNX"
        raise ExportError(f"{path} is not an ONNX file: {first_line(e)}") from None
    if not len(proto.graph.node):
        raise ExportError(f"{path} is not an ONNX model (no graph)")
    text = next((p.value for p in proto.metadata_props if p.key == META_KEY), None)
    meta = ExportMeta.from_json(text, str(path)) if text is not None else None
    if meta is not None and meta.input == PIXEL_INPUT:
        raise ExportError(
            f"{path} takes uint8 pixels (exported --with-preprocessing, for Triton clients that send decoded "
            "images): eval, predict and serve the file exported without it"
        )
    shape = _image_input_shape(proto, path)
    size = meta.preprocessing_obj().size if meta is not None else shape[2]
    if runtime == "auto":
        from resnetkit.runtime.choice import choose_onnx_runtime

        loaders = {"onnxruntime": onnx_runtime_module, "openvino": openvino_onnx_module}
        runtime = choose_onnx_runtime(path, size, loaders) if isinstance(size, int) else "onnxruntime"
    module = onnx_runtime_module(path) if runtime == "onnxruntime" else openvino_onnx_module(path)
    if meta is not None:
        return LoadedModel(module, meta.preprocessing_obj(), list(meta.classes), meta, runtime)
    return _foreign(module, shape, path, runtime)


def onnx_runtime_module(path: Path) -> OnnxRuntimeModule:
    """An ONNX file in an ONNX Runtime session on torch's thread count."""
    ort = require("onnxruntime", f"running {path.name}")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    # no busy-waiting: ORT's idle workers spin by default, taking the cores that the batches being prepared and any
    # other process (a training run beside) need. Measured (Intel Xeon, 2 vCPUs, interleaved, issue 32): int8
    # ResNet-20 over the test set 2,557 -> 3,307 img/s with a 1-thread training beside (heavier load: 1.4-1.6x; batch
    # 8 2.7 ms against 10.4), but 4,977 -> 4,590 on an idle machine, and batch-1 p50 0.28 -> 0.43 ms idle (0.33 -> 0.40
    # beside): this machine is shared, so the setting is for a busy one
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # external data too
    except Exception as e:  # noqa: BLE001  ORT refuses graphs it cannot run with its own exception types
        raise ExportError(f"ONNX Runtime cannot run {path}: {first_line(e)}") from None
    return OnnxRuntimeModule(session)


def openvino_onnx_module(path: Path) -> nn.Module:
    """An ONNX file compiled by OpenVINO's CPU plugin (its ONNX front end reads the file directly)."""
    from resnetkit.runtime.openvino_module import OpenVinoModule, compile_for_cpu

    try:
        return OpenVinoModule(compile_for_cpu(str(path)))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001  OpenVINO raises its own types for graphs it cannot compile
        raise ExportError(f"OpenVINO cannot run {path}: {first_line(e)}") from None


def _image_input_shape(proto: Any, path: Path) -> list[int | str]:
    """The (N, C, H, W) of the file's one input; an ExportError says what it takes instead."""
    weights = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    dims = [[d.dim_value or d.dim_param or "?" for d in i.type.tensor_type.shape.dim] for i in inputs]
    if len(inputs) != 1 or len(dims[0]) != 4 or dims[0][1] != 3:
        shown = ", ".join(f"{i.name} {tuple(d)}" for i, d in zip(inputs, dims, strict=True)) or "nothing"
        raise ExportError(f"{path} takes {shown}, not one image batch (N, 3, H, W): resnetkit cannot feed it")
    return dims[0]


def _foreign(module: nn.Module, shape: list[int | str], path: Path, runtime: str) -> LoadedModel:
    """An ONNX file not made by resnetkit: a fixed H x W is needed, the rest is assumed (and said)."""
    height, width = shape[2], shape[3]
    if not isinstance(height, int) or height != width:
        raise ExportError(
            f"{path} has no resnetkit metadata and its input size is {height} x {width}: resnetkit needs a fixed "
            "square size to prepare images (export it with `resnetkit export` to carry its preprocessing)"
        )
    if height <= 64:
        pre = Preprocessing("cifar", height, CIFAR10_MEAN, CIFAR10_STD, 1.0)
    else:
        pre = Preprocessing("imagenet", height, IMAGENET_MEAN, IMAGENET_STD, 0.875)
    with torch.no_grad():
        n_classes = int(module(torch.zeros(1, 3, height, height)).shape[-1])
    log.warning(
        "%s has no resnetkit metadata: assuming %s preprocessing at %d px (mean %s, std %s) and %d unnamed classes",
        path,
        pre.kind,
        height,
        pre.mean,
        pre.std,
        n_classes,
    )
    return LoadedModel(module, pre, [str(i) for i in range(n_classes)], None, runtime, named=False)
