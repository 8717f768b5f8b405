"""Residual blocks. Parameter names follow torchvision (convK, bnK, downsample.0 / .1) so checkpoints load as-is.

Post-activation blocks are those of "Deep Residual Learning" (He et al., 2015); pre-activation blocks are
those of "Identity Mappings in Deep Residual Networks" (He et al., 2016): BN -> ReLU -> conv, and nothing
after the addition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from resnetkit.layers import SHORTCUT_OPTIONS, DropPath, NormLayer, OptionAShortcut


@dataclass(frozen=True)
class BlockOptions:
    """Choices shared by every block of a network."""

    norm_layer: NormLayer
    shortcut: str = "B"
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False  # the original paper's bottleneck placement (ResNet v1); v1.5 strides the 3x3
    preact_projection_norm: bool = False

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"unknown shortcut option {self.shortcut!r}; choose one of {', '.join(SHORTCUT_OPTIONS)}")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups, dilation=dilation, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def make_shortcut(
    in_planes: int, out_planes: int, stride: int, opts: BlockOptions, *, with_norm: bool = True
) -> nn.Module | None:
    """The shortcut module for one block, or None for a plain identity (or no shortcut at all)."""
    reshapes = stride != 1 or in_planes != out_planes
    if opts.shortcut == "none" or (opts.shortcut in ("A", "B") and not reshapes):
        return None
    if opts.shortcut == "A":
        return OptionAShortcut(out_planes, stride)
    layers: list[nn.Module] = [conv1x1(in_planes, out_planes, stride)]
    if with_norm:
        layers.append(opts.norm_layer(out_planes))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """The base of every block (basic or bottleneck, post- or pre-activation): the shortcut (`downsample`),
    stochastic depth, `expansion` and the `preact` flag. Code that walks a network (BatchNorm folding,
    zero-init of the last norm) finds blocks by this class."""

    expansion = 1
    preact = False
    inner_convs = 1  # convolutions whose output channels stay inside the block (what pruning may narrow)

    def _init_shortcut(self, in_planes: int, out_planes: int, stride: int, opts: BlockOptions, drop: float) -> None:
        self.has_shortcut = opts.shortcut != "none"
        self.downsample = make_shortcut(
            in_planes, out_planes, stride, opts, with_norm=not self.preact or opts.preact_projection_norm
        )
        # Stochastic depth drops the residual branch; a plain network has nothing to fall back on.
        self.drop_path = DropPath(drop) if drop > 0 and self.has_shortcut else nn.Identity()

    def zero_init_last(self) -> None:
        """Make the block start as an identity (Goyal et al., 2017): zero the last layer of the branch."""
        raise NotImplementedError


def inner_widths_of(inner: Sequence[int] | None, default: int, count: int, groups: int = 1) -> tuple[int, ...]:
    """The block's inner widths: `inner` (a pruned network's, see compress.prune) or `default` for each."""
    if inner is None:
        return (default,) * count
    widths = tuple(int(w) for w in inner)
    if len(widths) != count or min(widths) < 1:
        raise ValueError(f"a block needs {count} positive inner width(s), got {list(inner)}")
    if groups != 1 and (len(set(widths)) != 1 or widths[0] % groups):
        raise ValueError(f"grouped blocks need equal inner widths divisible by groups={groups}, got {widths}")
    return widths


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34 and the paper's CIFAR networks)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        opts: BlockOptions,
        drop_path: float = 0.0,
        inner: Sequence[int] | None = None,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        if opts.groups != 1 or opts.base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        (mid,) = inner_widths_of(inner, planes, 1)
        self.conv1 = conv3x3(in_planes, mid, stride, dilation=dilation[0])
        self.bn1 = opts.norm_layer(mid)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid, planes, dilation=dilation[1])
        self.bn2 = opts.norm_layer(planes)
        self._init_shortcut(in_planes, planes, stride, opts, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.has_shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.drop_path(out) + identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand; stride on the 3x3 (v1.5) unless `stride_in_1x1`."""

    expansion = 4
    inner_convs = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        opts: BlockOptions,
        drop_path: float = 0.0,
        inner: Sequence[int] | None = None,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        width = int(planes * (opts.base_width / 64.0)) * opts.groups
        w1, w2 = inner_widths_of(inner, width, 2, opts.groups)
        stride_1x1, stride_3x3 = (stride, 1) if opts.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, w1, stride_1x1)
        self.bn1 = opts.norm_layer(w1)
        self.conv2 = conv3x3(w1, w2, stride_3x3, opts.groups, dilation[0])
        self.bn2 = opts.norm_layer(w2)
        self.conv3 = conv1x1(w2, planes * self.expansion)
        self.bn3 = opts.norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self._init_shortcut(in_planes, planes * self.expansion, stride, opts, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.has_shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.drop_path(out) + identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBasicBlock(ResidualBlock):
    """BN-ReLU-conv3x3 twice; the shortcut adds onto the raw branch output (He et al., 2016, Fig. 4e)."""

    preact = True

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        opts: BlockOptions,
        drop_path: float = 0.0,
        inner: Sequence[int] | None = None,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        if opts.groups != 1 or opts.base_width != 64:
            raise ValueError("PreActBasicBlock supports only groups=1 and base_width=64")
        (mid,) = inner_widths_of(inner, planes, 1)
        self.bn1 = opts.norm_layer(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, mid, stride, dilation=dilation[0])
        self.bn2 = opts.norm_layer(mid)
        self.conv2 = conv3x3(mid, planes, dilation=dilation[1])
        self._init_shortcut(in_planes, planes, stride, opts, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return _preact_merge(self, x, pre, out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(ResidualBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (preact ResNet-164/1001 and ImageNet -50/101/152)."""

    expansion = 4
    preact = True
    inner_convs = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        opts: BlockOptions,
        drop_path: float = 0.0,
        inner: Sequence[int] | None = None,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        width = int(planes * (opts.base_width / 64.0)) * opts.groups
        w1, w2 = inner_widths_of(inner, width, 2, opts.groups)
        self.bn1 = opts.norm_layer(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_planes, w1)
        self.bn2 = opts.norm_layer(w1)
        self.conv2 = conv3x3(w1, w2, stride, opts.groups, dilation[0])
        self.bn3 = opts.norm_layer(w2)
        self.conv3 = conv1x1(w2, planes * self.expansion)
        self._init_shortcut(in_planes, planes * self.expansion, stride, opts, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        out = self.conv3(self.relu(self.bn3(out)))
        return _preact_merge(self, x, pre, out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


def _preact_merge(block: ResidualBlock, x: torch.Tensor, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Add the shortcut. A projection reads the pre-activated input, as in the paper's Torch code."""
    if not block.has_shortcut:
        return out
    if block.downsample is None:
        identity = x
    elif isinstance(block.downsample, OptionAShortcut):
        identity = block.downsample(x)
    else:
        identity = block.downsample(pre)
    return block.drop_path(out) + identity
