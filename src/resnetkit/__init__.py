"""resnetkit: deep residual networks faithful to the papers, and the workflow around them."""

from resnetkit.errors import ResnetkitError, UnknownModelError, WeightsError
from resnetkit.models import FeatureExtractor, ResNet, count_macs, count_parameters, create_model, list_models
from resnetkit.transforms import DataConfig
from resnetkit.weights import read_state_dict, save_state_dict

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "FeatureExtractor",
    "ResNet",
    "ResnetkitError",
    "UnknownModelError",
    "WeightsError",
    "__version__",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
    "read_state_dict",
    "save_state_dict",
]
