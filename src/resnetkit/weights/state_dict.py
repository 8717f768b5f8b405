"""Fit a state dict to a model: adapt the first conv, reset a mismatched head, refuse anything else."""

from __future__ import annotations

import logging

import torch
from torch import nn

from resnetkit.errors import WeightsError

log = logging.getLogger(__name__)

_SHOWN = 5  # how many offending keys an error lists


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A pretrained first-conv kernel for `in_chans` input channels (timm's rule).

    One channel: the sum over RGB (a grey image as R=G=B gives the same response). More channels: RGB repeated
    and rescaled by 3 / in_chans so the activation scale stays that of the pretrained network.
    """
    old = weight.shape[1]
    if in_chans == old:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // old)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (old / in_chans)


def load_into_model(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    *,
    keep_head: bool = True,
    first_conv: str | None = None,
    classifier: str | None = None,
) -> None:
    """Load `state` strictly into `model`, after the two adaptations a user expects.

    - the first conv is adapted when the model takes another number of input channels;
    - with `keep_head=False` (the caller asked for other classes) the classifier keys are dropped and the
      model keeps its freshly initialised head; a log line says so.
    Anything else that does not fit is an error naming the first missing/unexpected keys and shape mismatches;
    nothing is copied into the model before the check passes. `first_conv` and `classifier` name those two
    modules; by default they are read from `model.default_cfg` (the model knows its architecture, this layer
    does not). Keys are first passed through the model's `remap_state_dict`, if it has one.
    """
    cfg = getattr(model, "default_cfg", None)
    first_conv = first_conv or getattr(cfg, "first_conv", None)
    classifier = classifier or getattr(cfg, "classifier", None)
    remap = getattr(model, "remap_state_dict", None)
    state = remap(state) if remap else dict(state)
    own = model.state_dict()
    if first_conv:
        _adapt_first_conv(own, state, source, f"{first_conv}.weight")
    head = None if keep_head else _drop_head(state, source, classifier)
    _check_compatible(own, state, source, ignore_prefix=head)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=keep_head)


def _drop_head(state: dict[str, torch.Tensor], source: str, classifier: str | None) -> str:
    """Remove the classifier's keys from `state`; the key prefix they had."""
    if not classifier:
        raise WeightsError(f"cannot fit {source} to other classes: the model names no classifier in its default_cfg")
    prefix = f"{classifier}."
    dropped = [k for k in list(state) if k.startswith(prefix)]
    for k in dropped:
        del state[k]
    if dropped:
        log.info("re-initialised the classifier head: %s has another number of classes", source)
    return prefix


def _adapt_first_conv(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, key: str) -> None:
    if key in own and key in state and own[key].shape[1] != state[key].shape[1]:
        if own[key].shape[0] != state[key].shape[0] or own[key].shape[2:] != state[key].shape[2:]:
            return  # not the same conv with other input channels: the compatibility check reports it
        state[key] = adapt_input_conv(state[key], own[key].shape[1])
        log.info("adapted the first convolution of %s to %d input channels", source, own[key].shape[1])


def _check_compatible(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, ignore_prefix: str | None
) -> None:
    def counts(k: str) -> bool:
        return not k.endswith("num_batches_tracked") and not (ignore_prefix and k.startswith(ignore_prefix))

    missing = [k for k in own if k not in state and counts(k)]
    unexpected = [k for k in state if k not in own and counts(k)]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and counts(k) and state[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    if problems:
        raise WeightsError(f"{source} does not fit this architecture; " + "; ".join(problems))
