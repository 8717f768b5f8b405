"""Running a model for inference whatever it is stored as: a checkpoint, registered weights, or an exported ONNX
(fp32, int8) or torch.export file, each on its own runtime."""

from resnetkit.runtime.exported import LoadedModel, OnnxRuntimeModule, file_format, host_threads, load_exported
from resnetkit.runtime.load import Loaded, load_model

__all__ = ["Loaded", "LoadedModel", "OnnxRuntimeModule", "file_format", "host_threads", "load_exported", "load_model"]
