"""The one ResNet network class behind every family: ImageNet or CIFAR stem, post- or pre-activation blocks.

Module names equal torchvision's (conv1, bn1, layerN.M..., fc) so torchvision and timm state dicts load
with strict=True. Every model offers the timm-style API: forward_features, forward_head, reset_classifier,
num_features, feature_info and default_cfg (which names the first conv and the classifier, as timm's does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from resnetkit.layers import NormLayer, resolve_norm_layer
from resnetkit.models.blocks import BlockOptions, ResidualBlock
from resnetkit.transforms import DataConfig

STEMS = ("imagenet", "cifar")
OUTPUT_STRIDES = (8, 16, 32)


class ResNet(nn.Module):
    """A residual (or plain) network: stem, stages of blocks, global average pooling, linear classifier.

    `stem="imagenet"`: 7x7/2 conv and 3x3/2 max-pool (He et al., 2015, Table 1). `stem="cifar"`: one 3x3 conv
    with 16 filters on 32x32 inputs (section 4.2). Pre-activation blocks get a bare conv stem and a final
    BN-ReLU (He et al., 2016). `inner_widths[stage][block]` lists a block's inner channel counts (one for basic
    blocks, two for bottlenecks): a channel-pruned network is described by them (compress.prune).
    """

    def __init__(
        self,
        block: type[ResidualBlock],
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        shortcut: str = "B",
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        norm_layer: str | NormLayer | None = None,
        inner_widths: Sequence[Sequence[Sequence[int]]] | None = None,
        output_stride: int = 32,
        default_cfg: DataConfig | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(stem, layers, widths, shortcut, zero_init_residual, output_stride)
        norm = resolve_norm_layer(norm_layer)
        opts = BlockOptions(norm, shortcut, groups, width_per_group, stride_in_1x1)
        self.stem_type = stem
        self.preact = block.preact
        self.num_classes = num_classes
        groups_: list[tuple[str, ...]] = [self._build_stem(stem, in_chans, widths[0], norm)]
        stem_reduction = 2 if stem == "imagenet" else 1
        self.feature_info: list[dict[str, Any]] = [
            dict(num_chs=widths[0], reduction=stem_reduction, module=groups_[0][-1])
        ]
        inner = _check_inner_widths(inner_widths, layers, block)
        plan = _stage_plan(len(layers), 4 if stem == "imagenet" else 1, output_stride)
        groups_ += self._build_stages(block, layers, widths, opts, drop_path_rate, inner, plan)
        self.num_features = widths[-1] * block.expansion
        if self.preact:
            self.norm = norm(self.num_features)
            self.act = nn.ReLU(inplace=True)
            groups_[-1] += ("norm", "act")
        self._feature_groups = tuple(groups_)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.default_cfg = self._own_cfg(default_cfg, in_chans)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _own_cfg(cfg: DataConfig | None, in_chans: int) -> DataConfig | None:
        """`cfg` for `in_chans` channels, naming the modules that loading weights adapts (first conv, head)."""
        return replace(cfg.with_channels(in_chans), first_conv="conv1", classifier="fc") if cfg else None

    def _build_stem(self, stem: str, in_chans: int, width: int, norm: NormLayer) -> tuple[str, ...]:
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        if self.preact:  # the first block's BN-ReLU normalises the stem output
            return ("conv1",)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        return ("conv1", "bn1", "relu")

    def _build_stages(
        self,
        block: type[ResidualBlock],
        layers: Sequence[int],
        widths: Sequence[int],
        opts: BlockOptions,
        drop_path_rate: float,
        inner: Sequence[Sequence[Sequence[int] | None]],
        plan: list[tuple[int, int, int, int]],
    ) -> list[tuple[str, ...]]:
        """Stage i: (stride, previous dilation, dilation, reduction after it) from `_stage_plan`."""
        total = sum(layers)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear decay rule (Huang et al.)
        in_planes, index, groups = widths[0], 0, []
        for stage, (width, depth) in enumerate(zip(widths, layers, strict=True)):
            stride, before, dilation, reduction = plan[stage]
            blocks = []
            for i in range(depth):
                first = (before, dilation) if i == 0 else (dilation, dilation)
                blocks.append(
                    block(in_planes, width, stride if i == 0 else 1, opts, rates[index], inner[stage][i], first)
                )
                in_planes, index = width * block.expansion, index + 1
            name = f"layer{stage + 1}"
            group: tuple[str, ...] = (name,)
            if stage == 0 and self.stem_type == "imagenet":
                # registered before layer1, so the modules are in forward order (torchvision's IntermediateLayerGetter,
                # which detection and segmentation backbones use, runs a model's children in registration order)
                self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
                group = ("maxpool", name)
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_planes, reduction=reduction, module=name))
            groups.append(group)
        return groups

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation: He-normal (fan_out) convolutions, unit-scale norms.
        if self.conv1.weight.is_meta:  # shape-only model (complexity counts): nothing to fill
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    @property
    def feature_groups(self) -> tuple[tuple[str, ...], ...]:
        """Module names run in order; group i ends at the feature map described by feature_info[i]."""
        return self._feature_groups

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, num_features, H/r, W/r), before pooling."""
        for group in self._feature_groups:
            for name in group:
                x = self._modules[name](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map and classify it; `pre_logits=True` returns the pooled (N, num_features) vector."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised head for `num_classes` (0 removes it: the model returns pooled features)."""
        ref = self.conv1.weight
        self.num_classes = num_classes
        if num_classes > 0:
            self.fc = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.fc = nn.Identity()

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Key aliases of published checkpoints: the public CIFAR ResNets name their classifier `linear`."""
        if self.stem_type != "cifar":
            return state
        return {("fc." + k[len("linear.") :] if k.startswith("linear.") else k): v for k, v in state.items()}


def _check_inner_widths(
    inner_widths: Sequence[Sequence[Sequence[int]]] | None, layers: Sequence[int], block: type[ResidualBlock]
) -> list[list[Sequence[int] | None]]:
    """Per stage, per block: the block's inner widths, or None for the architecture's own."""
    if inner_widths is None:
        return [[None] * depth for depth in layers]
    shape = [len(stage) for stage in inner_widths]
    if shape != list(layers):
        raise ValueError(f"inner_widths has {shape} blocks per stage; the network has {list(layers)}")
    if any(len(w) != block.inner_convs for stage in inner_widths for w in stage):
        raise ValueError(f"each {block.__name__} takes {block.inner_convs} inner width(s)")
    return [list(stage) for stage in inner_widths]


def _stage_plan(stages: int, reduction: int, output_stride: int) -> list[tuple[int, int, int, int]]:
    """Per stage: (stride of its first block, that block's first dilation, the stage's dilation, the feature map's
    reduction after it). Past `output_stride` a stage keeps the resolution and dilates its 3x3 convolutions by the
    stride it gave up (torchvision's replace_stride_with_dilation, timm's output_stride); the first block of such a
    stage keeps the previous stage's dilation on its first 3x3, as both do."""
    plan, dilation = [], 1
    for stage in range(stages):
        stride, before = (1 if stage == 0 else 2), dilation
        if reduction >= output_stride and stride > 1:
            dilation, stride = dilation * stride, 1
        reduction *= stride
        plan.append((stride, before, dilation, reduction))
    return plan


def _check_arguments(
    stem: str, layers: Sequence[int], widths: Sequence[int], shortcut: str, zero_init_residual: bool, output_stride: int
) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    if len(layers) != len(widths):
        raise ValueError(f"{len(layers)} stage depths given for {len(widths)} stage widths")
    if output_stride not in OUTPUT_STRIDES or (output_stride != 32 and stem != "imagenet"):
        raise ValueError(
            f"output_stride {output_stride} is not possible here: ImageNet-style networks take 8, 16 or 32 "
            "(dilated last stages); the CIFAR networks keep their 3 stages' strides"
        )
    if zero_init_residual and shortcut == "none":
        raise ValueError("zero_init_residual needs shortcuts: a plain network would start as zero")
