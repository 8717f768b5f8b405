"""The fast path on a plain CPU (issue 4): BatchNorm folding, channels_last, torch.compile with an eager fallback."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from resnetkit.models import ResidualBlock

log = logging.getLogger(__name__)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A convolution computing conv followed by (eval-mode) BatchNorm: w' = w * g / s, b' = (b - m) * g / s + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every BatchNorm that follows a convolution folded into it (post-activation nets:
    stem, blocks and projection shortcuts). Pre-activation BatchNorms (BN before ReLU before conv) stay."""
    model = copy.deepcopy(model).eval()
    pairs = [("conv1", "bn1")] if not getattr(model, "preact", False) and hasattr(model, "bn1") else []
    _fold_pairs(model, pairs)
    for m in model.modules():
        if isinstance(m, ResidualBlock) and not m.preact:
            _fold_pairs(m, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])
        if isinstance(m, ResidualBlock) and isinstance(m.downsample, nn.Sequential) and len(m.downsample) == 2:
            m.downsample[0] = fold_conv_bn(m.downsample[0], m.downsample[1])
            m.downsample[1] = nn.Identity()
    return model


def _fold_pairs(module: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, conv_name, fold_conv_bn(conv, bn))
            setattr(module, bn_name, nn.Identity())


class CompiledOrEager(nn.Module):
    """torch.compile'd forward that falls back to the eager module, with one warning, if compilation fails
    (no C++ compiler, an unsupported platform, an inductor bug): a run never dies for want of a compiler."""

    def __init__(self, module: nn.Module, inductor_config: dict[str, Any] | None = None, **compile_kwargs: Any) -> None:
        super().__init__()
        self.module = module
        self._compiled: Callable[..., Any] | None = torch.compile(module, **compile_kwargs)
        self._inductor_config = dict(inductor_config or {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                with _inductor_settings(self._inductor_config):
                    return self._compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001  any compiler failure: keep going eagerly
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                log.warning("torch.compile failed (%s: %s); continuing in eager mode", type(e).__name__, first)
                self._compiled = None
        return self.module(*args, **kwargs)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None


def _inductor_settings(settings: dict[str, Any]) -> AbstractContextManager[Any]:
    """torch._inductor.config patched with `settings` for the duration of the block (nothing when empty)."""
    if not settings:
        return nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(settings)


def speed_up_for_training(
    model: nn.Module, compile: bool, wrap: Callable[[nn.Module], nn.Module] | None = None
) -> nn.Module:
    """channels_last in place, then `wrap` (DistributedDataParallel when several processes run), then optionally
    a compiled wrapper around that (compile outside DDP, as PyTorch recommends). Weights stay shared with `model`."""
    model.to(memory_format=torch.channels_last)
    wrapped = wrap(model) if wrap is not None else model
    return CompiledOrEager(wrapped) if compile else wrapped


def speed_up_for_inference(model: nn.Module, *, fold_bn: bool = True, compile: bool = True) -> nn.Module:
    """Folded BatchNorm, channels_last, and a frozen compiled graph (weights baked in as constants)."""
    fast = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    fast = fast.to(memory_format=torch.channels_last).requires_grad_(False)
    if not compile:
        return fast
    # Constant-fold the weights into this graph. The setting is patched in around this module's own calls (where
    # it compiles, lazily); setting torch._inductor.config.freezing would leave it on for every later compile in
    # the process, a training step's too (issue 13). torch.compile(options={"freezing": True}) did not freeze.
    return CompiledOrEager(fast, inductor_config={"freezing": True})


# Compile an evaluation only when its work (images x multiply-accumulates per image) is large enough for the ~10%
# a frozen graph saves to exceed the compile itself (8 s with a warm cache, about a minute without, on 2 cores).
# Measured here (`resnetkit bench eval`): for the 10,000 CIFAR-10 test images with ResNet-20 (0.4 T MACs) a compile
# made the whole evaluation 2.4x slower (14.0 s against 5.8 s eager); 2e13 is ResNet-50 on ~5,000 images.
COMPILE_EVAL_MACS = 2e13


def should_compile(images: int, macs_per_image: int) -> bool:
    """Whether a frozen compiled graph pays for itself on `images` images of `macs_per_image` multiply-accumulates
    each (`models.count_macs`; see COMPILE_EVAL_MACS)."""
    return images * macs_per_image >= COMPILE_EVAL_MACS
