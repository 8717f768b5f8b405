"""resnetkit: deep residual networks faithful to the papers, and the workflow around them."""

from resnetkit.config import TrainConfig
from resnetkit.constants import VERSION
from resnetkit.engine.runner import RunResult, run_training
from resnetkit.errors import DataError, ResnetkitError, UnknownModelError, WeightsError
from resnetkit.models import FeatureExtractor, ResNet, count_macs, count_parameters, create_model, list_models
from resnetkit.runtime import Predictor
from resnetkit.transforms import DataConfig
from resnetkit.weights import read_state_dict, save_state_dict
from resnetkit.workflows.inference import evaluate_checkpoint, predict_files

__version__ = VERSION

__all__ = [
    "DataConfig",
    "DataError",
    "Predictor",
    "RunResult",
    "TrainConfig",
    "evaluate_checkpoint",
    "predict_files",
    "run_training",
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
