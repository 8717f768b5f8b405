"""Running a model for inference whatever it is stored as: a checkpoint, registered weights, or an exported ONNX
(fp32, int8) or torch.export file, each on its own runtime, behind one interface (`Predictor`)."""

from resnetkit.runtime.exported import LoadedModel, OnnxRuntimeModule, file_format, host_threads, load_exported
from resnetkit.runtime.load import Loaded, load_model
from resnetkit.runtime.predictor import Predictor, top_classes

__all__ = [
    "Loaded",
    "LoadedModel",
    "OnnxRuntimeModule",
    "Predictor",
    "file_format",
    "host_threads",
    "load_exported",
    "load_model",
    "top_classes",
]
