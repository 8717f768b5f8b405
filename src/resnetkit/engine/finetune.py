"""Fine-tuning strategies (issue 5): which parameters train, at which learning rate, and whether BatchNorm adapts.

Lives in engine/ because the training loop applies it; it reads only the model API (`feature_groups`,
`get_classifier`), never an architecture name.
"""

from __future__ import annotations

from torch import nn

from resnetkit.config import FINETUNE_STRATEGIES as STRATEGIES


def stage_modules(model: nn.Module) -> list[list[nn.Module]]:
    """The model's stages in forward order (stem first), from the model API's feature groups."""
    return [[getattr(model, name) for name in group] for group in model.feature_groups]


def apply_strategy(model: nn.Module, strategy: str, trainable_stages: int = 1) -> None:
    """Set requires_grad: `linear` trains the classifier only (a linear probe); `last` the classifier and the
    last `trainable_stages` stages; `full` everything (give the backbone a lower lr with `backbone_lr_mult`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    model.requires_grad_(strategy == "full")
    if strategy == "last":
        if trainable_stages < 1:
            raise ValueError("the `last` strategy needs trainable_stages >= 1")
        for stage in stage_modules(model)[-trainable_stages:]:
            for module in stage:
                module.requires_grad_(True)
    model.get_classifier().requires_grad_(True)


def freeze_batchnorm(model: nn.Module, only_frozen_params: bool) -> None:
    """Put BatchNorm layers in eval mode (running statistics kept as pretrained). With `only_frozen_params`,
    only those whose affine parameters do not train (the frozen part of a linear probe / last-N model)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not only_frozen_params or not any(p.requires_grad for p in m.parameters()):
                m.eval()


def finetune_param_groups(
    model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float, no_decay_bn_bias: bool = False
) -> list[dict]:
    """Trainable parameters grouped by learning rate, the classifier at `lr` and the backbone at
    `lr * backbone_lr_mult`; with `no_decay_bn_bias` each is split again, BatchNorm parameters and biases (the 1-d
    tensors) without weight decay, as `optim.param_groups` does for training from scratch."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = []
    for in_head, group_lr in ((True, lr), (False, lr * backbone_lr_mult)):
        params = [p for p in trainable if (id(p) in head) == in_head]
        if not no_decay_bn_bias:
            groups.append({"params": params, "lr": group_lr, "weight_decay": weight_decay})
            continue
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": group_lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]
