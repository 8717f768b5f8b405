"""Weights: reading and writing state dicts safely, downloading with sha256 checks, fitting them to a model."""

from resnetkit.weights.download import download_url, sha256_file
from resnetkit.weights.io import read_state_dict, save_state_dict, unwrap_state_dict
from resnetkit.weights.state_dict import adapt_input_conv, load_into_model

__all__ = [
    "adapt_input_conv",
    "download_url",
    "load_into_model",
    "read_state_dict",
    "save_state_dict",
    "sha256_file",
    "unwrap_state_dict",
]
