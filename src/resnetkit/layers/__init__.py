"""Small building blocks shared by the model families."""

from resnetkit.layers.drop_path import DropPath, drop_path
from resnetkit.layers.norm import FrozenBatchNorm2d, NormLayer, resolve_norm_layer
from resnetkit.layers.shortcuts import SHORTCUT_OPTIONS, OptionAShortcut, option_a_shortcut

__all__ = [
    "SHORTCUT_OPTIONS",
    "DropPath",
    "FrozenBatchNorm2d",
    "NormLayer",
    "OptionAShortcut",
    "drop_path",
    "option_a_shortcut",
    "resolve_norm_layer",
]
