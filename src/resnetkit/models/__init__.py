"""The ResNet model family: one network class, blocks, registry entries, the factory and complexity counts."""

from resnetkit.model_registry import ModelEntry, get_model_entry
from resnetkit.models import zoo as _zoo  # noqa: F401  (registers every architecture)
from resnetkit.models.blocks import (
    BasicBlock,
    BlockOptions,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
)
from resnetkit.models.complexity import count_macs, count_parameters
from resnetkit.models.factory import create_model, list_models, resolve_data_config
from resnetkit.models.features import FeatureExtractor, FeatureInfo
from resnetkit.models.resnet import ResNet

__all__ = [
    "BasicBlock",
    "BlockOptions",
    "Bottleneck",
    "FeatureExtractor",
    "FeatureInfo",
    "ModelEntry",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "ResidualBlock",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_model_entry",
    "list_models",
    "resolve_data_config",
]
