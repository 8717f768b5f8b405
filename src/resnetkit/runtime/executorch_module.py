"""ExecuTorch `.pte` programs as models: ExecuTorch's own runtime (its Python bindings over the C++ runtime that
phones and boards link) runs the file, and `ExecuTorchModule` puts it behind nn.Module's call, so evaluation,
prediction, benchmarks and the service run the same bytes a device would.

Threads: the XNNPACK delegate computes on ExecuTorch's one process-wide thread pool, which is sized here to torch's
thread count before the first program loads. Each loaded program keeps a pointer to that pool (XNNPACK captures it
when the method is initialised), so once one is loaded the pool is never replaced: ExecuTorch's
`_unsafe_reset_threadpool` would leave those programs pointing at freed memory. A later load that asks for another
count says so and runs on the pool as it is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ExportError, first_line
from resnetkit.export.executorch_writer import META_METHOD, METHOD, require
from resnetkit.export.metadata import ExportMeta

log = logging.getLogger(__name__)
_pool = {"loaded": False}  # whether a program's method holds ExecuTorch's thread pool (then it is never reset)


class ExecuTorchModule(nn.Module):
    """An ExecuTorch program's `forward` behind nn.Module's call: a normalized float32 NCHW batch in, float32 logits
    out (on the CPU). Batches beyond the program's planned bound run in chunks of it. One call at a time: a method
    owns its planned memory."""

    uses_own_threads = True  # runtime.host_threads: torch steps aside while XNNPACK computes

    def __init__(self, program: Any, method: Any, max_batch: int) -> None:
        super().__init__()
        self.program = program  # the method's memory lives in the program: keep it alive with the method
        self.method = method
        self.max_batch = max_batch
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        if len(x) > self.max_batch:
            return torch.cat([self.forward(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        with self._lock:
            return self.method.execute([x])[0]


def load_pte(path: Path) -> tuple[ExecuTorchModule, ExportMeta]:
    """A `.pte` file made by `resnetkit export --format executorch` on ExecuTorch's runtime, and its metadata;
    one-line ExportErrors for a file it cannot read and for a program without resnetkit's metadata."""
    runtime = require("executorch.runtime", f"running {path.name}")
    with native_log_to_debug():
        _size_thread_pool(torch.get_num_threads())
        try:
            program = runtime.Runtime.get().load_program(path)
        except Exception as e:  # noqa: BLE001  an untrusted file: the runtime's verification refused it
            raise ExportError(f"ExecuTorch cannot read {path}: {first_line(e)}") from None
    if META_METHOD not in program.method_names:
        raise ExportError(
            f"{path} was not made by resnetkit export: it has no resnetkit metadata (its {META_METHOD!r} method: "
            "classes, preprocessing); export the checkpoint with `resnetkit export --format executorch`"
        )
    meta = ExportMeta.from_json(_meta_text(program, path), str(path))
    with native_log_to_debug():
        try:
            method = program.load_method(METHOD)
        except Exception as e:  # noqa: BLE001  e.g. a backend this runtime was built without
            raise ExportError(f"ExecuTorch cannot load {path}'s {METHOD} method: {first_line(e)}") from None
    _pool["loaded"] = True
    return ExecuTorchModule(program, method, int(method.metadata.input_tensor_meta(0).sizes()[0])), meta


def _meta_text(program: Any, path: Path) -> str:
    try:
        values = program.load_method(META_METHOD).execute([])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: its resnetkit metadata cannot be read ({first_line(e)})") from None
    if len(values) != 1 or not isinstance(values[0], str):
        raise ExportError(f"{path}: its {META_METHOD!r} method does not return the resnetkit metadata (one string)")
    return values[0]


def _size_thread_pool(threads: int) -> None:
    """ExecuTorch's thread pool at `threads` threads, unless a loaded program already holds it (module docstring)."""
    bindings = require("executorch.extension.pybindings.portable_lib", "running ExecuTorch programs")
    current = bindings._threadpool_get_thread_count()
    if current == threads:
        return
    if _pool["loaded"]:
        log.warning(
            "ExecuTorch's thread pool keeps %d threads (asked: %d): a program loaded earlier uses it", current, threads
        )
        return
    bindings._unsafe_reset_threadpool(threads)


@contextlib.contextmanager
def native_log_to_debug() -> Iterator[None]:
    """ExecuTorch's runtime logs at its Info level, compiled in, through Python's sys.stderr where its bindings run
    it and to file descriptor 2 otherwise: creating the thread pool on an x86 CPU reports five lines about ARM-only
    /sys files, and a refused file adds one of its own. Here both go to this module's logger at DEBUG level, so a
    command's stderr keeps its one line."""
    sys.stderr.flush()
    saved, text = os.dup(2), io.StringIO()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = text.getvalue().splitlines() + captured.read().decode(errors="replace").splitlines()
            for line in lines:
                log.debug("executorch: %s", line)
