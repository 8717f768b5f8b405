"""What an exported file carries so that nothing else is needed to use it: the class names, the preprocessing
(input size, mean, std, interpolation, crop), the architecture, the resnetkit version and the source checkpoint's
sha256. ONNX files keep it as one JSON string in their `metadata_props` (key `resnetkit`); `.pt2` files as the
extra file `resnetkit.json` of their archive; ExecuTorch `.pte` programs as the string their constant method
`resnetkit_meta` returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from resnetkit.constants import VERSION
from resnetkit.errors import ExportError
from resnetkit.transforms import Preprocessing

META_KEY = "resnetkit"  # ONNX metadata_props key
META_FILE = "resnetkit.json"  # .pt2 extra file
FORMATS = ("onnx", "pt2", "openvino", "executorch")
INT8_FORMATS = ("onnx", "openvino", "executorch")  # --int8: each runtime's own post-training quantization
INPUT_NAME, OUTPUT_NAME = "input", "logits"
FLOAT_INPUT, PIXEL_INPUT = "float32_nchw", "uint8_nhwc"


@dataclass(frozen=True)
class ExportMeta:
    """The description written into every exported file."""

    architecture: str
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]  # Preprocessing.to_dict()
    format: str  # onnx | pt2 | openvino | executorch
    source: str  # the checkpoint, run folder, weights file or registered name it was made from
    source_sha256: str
    precision: str = "fp32"  # fp32 | int8
    calibration: dict[str, Any] | None = None  # int8: which images, how many, the method
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    resnetkit_version: str = VERSION
    # where the model was trained: {"config": data, data_dir, seed, val_fraction, val_size; "datasets": run.json's
    # train and test records (the held-out files)}, so eval/report of the file score the images its checkpoint would
    provenance: dict[str, Any] | None = None
    # what the graph takes: float32 NCHW already normalised, or (--with-preprocessing) uint8 NHWC pixels at the
    # input size, normalised inside the graph (for Triton clients that send decoded images)
    input: str = FLOAT_INPUT

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "classes": list(self.classes)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ExportMeta:
        """Parse and check; a one-line ExportError names the file and what is wrong."""
        try:
            values = json.loads(text)
            known = {f.name for f in fields(cls)}  # a later version's extra keys are ignored, not an error
            meta = cls(**{k: v for k, v in values.items() if k in known} | {"classes": tuple(values["classes"])})
            meta.preprocessing_obj()
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ExportError(f"{where}: its resnetkit metadata is damaged ({type(e).__name__}: {e})") from None
        if not all(isinstance(c, str) for c in meta.classes) or not meta.classes:
            raise ExportError(f"{where}: its resnetkit metadata names no classes")
        return meta

    def preprocessing_obj(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)
