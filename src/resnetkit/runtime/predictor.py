"""`Predictor`: the one inference interface. Built from any source a command takes (a checkpoint file or run folder,
registered weights, an fp32 or int8 `.onnx` file, a `.pt2` file), it prepares images with the model's own
preprocessing, returns logits and the top-k classes, and describes itself. Which backend runs the model, in which
memory layout, on how many threads and in which precision is decided here: evaluation, prediction, reports,
benchmarks and the service never ask."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.engine.fastpath import should_compile, speed_up_for_inference
from resnetkit.errors import ExportError
from resnetkit.models import count_macs
from resnetkit.runtime.exported import host_threads
from resnetkit.runtime.load import Loaded, load_model
from resnetkit.transforms import Preprocessing
from resnetkit.weights.download import sha256_file
from resnetkit.weights.registry import is_weights_name

log = logging.getLogger(__name__)


class Predictor:
    """A model ready for inference, whatever it is stored as. `Predictor.load(source)`; `gradients=True` refuses a
    source that cannot give gradients (an exported file), in one line naming it."""

    def __init__(self, loaded: Loaded, source: str | Path) -> None:
        self._loaded = loaded
        self.source = str(source)
        self._runnable: dict[tuple[bool, bool], nn.Module] = {}

    @classmethod
    def load(cls, source: str | Path, *, gradients: bool = False, runtime: str | None = None) -> Predictor:
        predictor = cls(load_model(source, runtime), source)
        if gradients and not predictor.supports_gradients:
            raise ExportError(
                f"{source} is an exported {predictor.runtime} model without gradients: use the PyTorch checkpoint it "
                "was exported from"
            )
        return predictor

    # --- what it is ----------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self._loaded.classes

    @property
    def named(self) -> bool:
        """False for an ONNX file without resnetkit metadata: its classes are numbers until the data names them."""
        exported = self._loaded.exported
        return exported is None or exported.named

    @property
    def preprocessing(self) -> Preprocessing:
        return self._loaded.preprocessing

    @property
    def architecture(self) -> str:
        return self._loaded.architecture

    @property
    def model_kwargs(self) -> dict[str, Any]:
        exported = self._loaded.exported
        if exported is not None and exported.meta is not None:
            return dict(exported.meta.model_kwargs)
        return dict(self._loaded.model_kwargs)

    @property
    def runtime(self) -> str:
        """ "pytorch", "onnxruntime", "openvino", "torch.export" or "executorch"."""
        exported = self._loaded.exported
        return "pytorch" if exported is None else exported.runtime

    @property
    def precision(self) -> str:
        exported = self._loaded.exported
        return exported.meta.precision if exported is not None and exported.meta is not None else "fp32"

    @property
    def supports_gradients(self) -> bool:
        return self._loaded.exported is None

    @property
    def file(self) -> Path | None:
        return self._loaded.file

    @property
    def config(self) -> dict[str, Any]:
        """The training run's recorded config where the source carries one (a checkpoint, or an exported file's
        provenance: the data, its folder, the split's seed and fractions), else {}."""
        exported = self._loaded.exported
        if exported is not None:
            meta = exported.meta
            return dict((meta.provenance or {}).get("config") or {}) if meta is not None else {}
        return dict(self._loaded.config)

    def run_record(self) -> dict[str, Any]:
        """The run's record of its data (run.json's `datasets`: the training source, the held-out files), from the
        run folder holding a checkpoint or from an exported file's provenance; {} where there is none."""
        exported = self._loaded.exported
        if exported is not None:
            meta = exported.meta
            datasets = (meta.provenance or {}).get("datasets") if meta is not None else None
            return {"datasets": datasets} if datasets else {}
        return run_record(self.source)

    def provenance(self) -> dict[str, Any]:
        """What an exported file keeps of where its model was trained (ExportMeta.provenance)."""
        record = self.run_record().get("datasets") or {}
        keep = ("data", "data_dir", "seed", "val_fraction", "val_size")
        config = {k: v for k, v in self.config.items() if k in keep}
        datasets = {k: v for k, v in record.items() if k in ("train", "test") and isinstance(v, dict)}
        return {"config": config, "datasets": datasets} if config or datasets else {}

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.architecture or "onnx",
            "source": self.source,
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "runtime": self.runtime,
            "precision": self.precision,
            "gradients": self.supports_gradients,
        }

    # --- running it ----------------------------------------------------------------------------------------------
    @property
    def memory_format(self) -> torch.memory_format:
        return self._loaded.memory_format

    @property
    def model(self) -> nn.Module:
        """The model as loaded (eval mode): the eager PyTorch model, or the exported file's runtime module."""
        return self._loaded.model

    def gradient_model(self) -> nn.Module:
        """The eager PyTorch model, for what takes gradients (Grad-CAM, pruning)."""
        if not self.supports_gradients:
            raise ExportError(f"{self.source} is an exported {self.runtime} model without gradients")
        return self._loaded.model

    def should_compile(self, images: int) -> bool:
        """Whether a compiled graph pays for itself on `images` images (PyTorch sources only)."""
        if not self.supports_gradients:
            return False
        size = self.preprocessing.size
        return should_compile(images, count_macs(self._loaded.model, (3, size, size)))

    def runnable(self, compile: bool = False, *, fold_bn: bool = True) -> nn.Module:
        """The fastest module for this source: the PyTorch fast path (folded BatchNorm, channels_last, a compiled
        graph when asked) or the exported file's runtime. Made once per setting."""
        key = (compile, fold_bn)
        if key not in self._runnable:
            model = self._loaded.model
            if self.supports_gradients:
                model = speed_up_for_inference(model, fold_bn=fold_bn, compile=compile)
            self._runnable[key] = model
        return self._runnable[key]

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a loop that feeds the model: the host threads its runtime wants (see runtime.host_threads)."""
        with host_threads(self._loaded.model):
            yield

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch [N, 3, S, S] (S = preprocessing.storage_size) as the model takes it: centre crop,
        normalisation, the runtime's memory layout."""
        return self.preprocessing.eval_batch(images, self.memory_format)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits of a prepared batch, from `runnable()` (no compile: made once, on the first call)."""
        return self.runnable()(batch).float()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a uint8 batch."""
        return self.logits(self.prepare(images)).softmax(dim=1)

    def topk(self, probs: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        """The k most probable classes of each row of `probs` (k capped at the number of classes), most probable
        first: `[{"class", "prob"}, ...]` per row."""
        return top_classes(probs, self.classes, k)

    def reference_model(self) -> nn.Module | None:
        """The PyTorch model with these weights: a checkpoint's own; an exported file's source where it is still
        here (a registered name, or a file with the sha256 the export recorded); None otherwise."""
        exported = self._loaded.exported
        if exported is None:
            return self._loaded.model
        meta = exported.meta
        if meta is None:
            return None
        if not is_weights_name(meta.source):
            path = Path(meta.source)
            file = path / "checkpoints" / "last.pt" if path.is_dir() else path
            if not file.is_file() or (meta.source_sha256 and sha256_file(file) != meta.source_sha256):
                log.warning("the source %s of this file is not here: the baseline has random weights", meta.source)
                return None
        return load_model(meta.source).model


def top_classes(probs: torch.Tensor, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """The one top-k: for each row of `probs`, the k (at least 1, at most len(classes)) most probable classes."""
    if probs.ndim == 1:
        probs = probs[None]
    k = max(1, min(k, len(classes)))
    top = probs.float().topk(k, dim=1)
    return [
        [{"class": classes[c], "prob": q} for c, q in zip(i, p, strict=True)]
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def run_record(checkpoint: str | Path) -> dict[str, Any]:
    """run.json of the run folder holding `checkpoint` (the folder, or RUN/checkpoints/NAME.pt); {} without one
    (a checkpoint copied elsewhere, registered weights)."""
    import json

    path = Path(checkpoint)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    if run is None or not (run / "run.json").is_file():
        return {}
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        log.warning("%s is not readable JSON; ignored", run / "run.json")
        return {}
    return record if isinstance(record, dict) else {}
