"""Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhay et al., 2018) through the model API.

The target layer is chosen by name among the modules the model runs in order (`model.feature_groups`, e.g.
"layer3"; by default the last one, whose output the head pools), or a block inside one ("layer3.8"). A forward
hook keeps that layer's output for one call and is removed when the `GradCAM` context exits, whatever happens
(pytorch-grad-cam's pattern); gradients come from `torch.autograd.grad`, so no `.grad` is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ResnetkitError

METHODS = ("gradcam", "gradcam++")
_EPS = 1e-7


class ExplainError(ResnetkitError):
    """An input or a request that an explanation cannot be computed for."""


class UnknownLayerError(ExplainError):
    """A target layer name the model does not have; the message lists the valid ones."""


def layer_names(model: nn.Module) -> list[str]:
    """The layers a map can be computed for: the modules of `model.feature_groups`, in the order they run."""
    groups = getattr(model, "feature_groups", None)
    if groups is None:
        raise ExplainError(f"{type(model).__name__} has no feature_groups: Grad-CAM needs a resnetkit model")
    return [name for group in groups for name in group]


def default_layer(model: nn.Module) -> str:
    """The last module run before pooling: its output is the feature map the classifier sees."""
    return layer_names(model)[-1]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """(name, module) for a layer name (None: the default); unknown names raise UnknownLayerError."""
    names = layer_names(model)
    name = name or names[-1]
    if name.split(".", 1)[0] in names:
        try:
            return name, model.get_submodule(name)
        except AttributeError:
            pass
    stages = [n for n in names if isinstance(model.get_submodule(n), nn.Sequential)]
    example = f" (or a block inside a stage, e.g. {stages[-1]}.0)" if stages else ""
    raise UnknownLayerError(f"unknown layer {name!r}; valid layers: {', '.join(names)}{example}")


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse, with one line, a batch the model cannot take: wrong shape or channels, or smaller than the model's
    total downsampling (the last feature map would be empty)."""
    cfg = getattr(model, "default_cfg", None)
    chans = cfg.input_size[0] if cfg is not None else None
    if x.ndim != 4:
        raise ExplainError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if chans is not None and x.shape[1] != chans:
        raise ExplainError(f"the images have {x.shape[1]} channel(s); the model takes {chans}")
    info = getattr(model, "feature_info", None)
    reduction = info[-1]["reduction"] if info else 1
    if min(x.shape[-2:]) < reduction:
        raise ExplainError(f"images of {x.shape[-2]}x{x.shape[-1]} are too small: the model downsamples by {reduction}")


@dataclass
class CamResult:
    """Heat maps in [0, 1] at the input resolution (N, H, W), the class each explains and the model's output."""

    maps: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    layer: str
    method: str

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


class GradCAM:
    """`with GradCAM(model, "layer3") as cam: result = cam(x)`: class-activation maps for a batch.

    The model runs in eval mode inside the context (its mode is restored on exit) and the hook is always removed.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.layer, self.module = resolve_layer(model, layer)
        self._handle: Any = None
        self._activation: torch.Tensor | None = None
        self._was_training = model.training

    def __enter__(self) -> GradCAM:
        self._was_training = self.model.training
        self.model.eval()
        self._handle = self.module.register_forward_hook(self._keep)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None
        self.model.train(self._was_training)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        self._activation = output
        return output.clone()  # later in-place ops (ReLU(inplace=True)) must not rewrite what we keep

    def __call__(self, x: torch.Tensor, target: torch.Tensor | int | None = None, method: str = "gradcam") -> CamResult:
        """Maps for class `target` (default: each image's predicted class), by "gradcam" or "gradcam++"."""
        if self._handle is None:
            raise RuntimeError("use GradCAM as a context manager: `with GradCAM(model) as cam: cam(x)`")
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        check_input(self.model, x)
        with torch.enable_grad():
            logits = self.model(x.detach())
            activation, self._activation = self._activation, None
            if activation is None or activation.ndim != 4:
                raise ExplainError(f"layer {self.layer!r} gives no (N, C, H, W) feature map to explain")
            cls = _targets(target, logits)
            score = logits.gather(1, cls.view(-1, 1)).sum()  # the class score before softmax, as in both papers
            (grads,) = torch.autograd.grad(score, activation)
        cam = cam_from_gradients(activation.detach().float(), grads.float(), method)
        maps = _normalise(F.interpolate(cam.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return CamResult(maps.squeeze(1), cls, logits.detach().float(), self.layer, method)


def cam_from_gradients(activation: torch.Tensor, grads: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """ReLU(sum_k w_k A_k) at the layer's resolution (N, h, w), with channel weights w_k per method.

    Grad-CAM: w_k is the spatial mean of the gradient. Grad-CAM++ (Chattopadhay et al., 2018, eq. 19, with the
    exponential of the score, which turns the higher derivatives into powers of the first):
    alpha = g^2 / (2 g^2 + sum_ab A * g^3), w_k = sum_ij alpha * ReLU(g).
    """
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3), keepdim=True)
    elif method == "gradcam++":
        g2 = grads.pow(2)
        denom = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * grads
        alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.full_like(denom, _EPS)), 0.0)
        weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    else:
        raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return (weights * activation).sum(dim=1).clamp(min=0)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    target: torch.Tensor | int | None = None,
    method: str = "gradcam",
) -> CamResult:
    """One-call form of `GradCAM`: the hook exists only for the duration of this call."""
    with GradCAM(model, layer) as cam:
        return cam(x, target, method)


def _targets(target: torch.Tensor | int | None, logits: torch.Tensor) -> torch.Tensor:
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, torch.Tensor):
        cls = target.to(logits.device).long().flatten()
    else:
        cls = torch.full((n,), int(target), dtype=torch.long, device=logits.device)
    if cls.numel() != n or bool(((cls < 0) | (cls >= num_classes)).any()):
        raise ExplainError(f"target classes must be {n} indices in 0..{num_classes - 1}")
    return cls


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] by its own maximum (a map that is zero everywhere stays zero)."""
    peak = maps.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return torch.where(peak > 0, maps / peak.clamp(min=_EPS), torch.zeros_like(maps))
