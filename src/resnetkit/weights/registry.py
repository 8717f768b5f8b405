"""Pretrained weights as data (torchvision's `Weights`, timm's pretrained cfgs): where a file comes from, how
it is verified, which classes it predicts, how its inputs were prepared, and what it measured."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetkit.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from resnetkit.errors import WeightsError
from resnetkit.files import cache_dir
from resnetkit.transforms import DataConfig
from resnetkit.weights.download import download_url, hub_hash_prefix, sha256_file

SHIPPED = Path(__file__).parent / "shipped"
OFFLINE_ENV = "RESNETKIT_OFFLINE"  # "1": never download; a missing file is an error naming where to put it
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class WeightsEntry:
    """One set of pretrained weights. `url` is an http(s) URL, or a file name shipped inside the package."""

    name: str  # "<architecture>.<tag>", timm style
    url: str
    sha256: str  # the full hash, or torch.hub's hash prefix where the publisher gives only that
    num_classes: int
    classes: tuple[str, ...]
    data_config: DataConfig
    metrics: dict[str, float] = field(default_factory=dict)
    recipe: str = ""
    source: str = ""
    # resnetkit's own weights: how they were made (recipe, seed, command, cpu, precision, minutes of training)
    training: dict[str, Any] = field(default_factory=dict)
    # "classification" (models.create_model), "detection" or "segmentation" (tasks/: the arguments of
    # create_detector / create_segmenter in `build`, with "frozen_bn_eps" where the file was trained with another eps)
    task: str = "classification"
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def shipped(self) -> bool:
        return not self.url.startswith(("http://", "https://"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "url": self.url,
            "sha256": self.sha256,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "preprocessing": self.data_config.to_dict(),
            "metrics": self.metrics,
            "recipe": self.recipe,
            "source": self.source,
            "training": self.training,
            "task": self.task,
            "build": self.build,
        }


_SHIPPED_ENTRIES = (
    WeightsEntry(
        name="resnet20.rk_cifar10",
        url="resnet20_rk_cifar10.safetensors",
        sha256="76acdddeb6d2390e5f59eb21cf9b1794676efb5cbcd9b38e5c79c35769815742",
        num_classes=10,
        classes=CIFAR10_CLASSES,
        data_config=DataConfig((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, crop_pct=1.0, preset="cifar"),
        metrics={"cifar10_test_top1": 0.9142, "cifar10_test_top1_flip_tta": 0.9225},
        recipe="resnetkit train --config cifar10_bf16_cpu --data-dir CIFAR10_DIR --seed 0 (42 epochs, bf16, 26.6 min)",
        source="resnetkit; trained on the 50,000 CIFAR-10 training images (the last epoch's weights)",
        training={
            "recipe": "cifar10_bf16_cpu",
            "seed": 0,
            "precision": "bf16 autocast",
            "minutes": 26.6,
            "command": "resnetkit train --config cifar10_bf16_cpu --data-dir CIFAR10_DIR --seed 0",
            "cpu": "AMD EPYC (Zen 5; avx512_bf16 avx512_vnni, no AMX), 2 threads",
        },
    ),
    WeightsEntry(
        name="resnet56.rk_cifar10",
        url="resnet56_rk_cifar10.safetensors",
        sha256="33ebc74cf8c13447b567af94b5fe53cfbe196e4d291c6bef4de9fa2e32a8c5dd",
        num_classes=10,
        classes=CIFAR10_CLASSES,
        data_config=DataConfig((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, crop_pct=1.0, preset="cifar"),
        metrics={"cifar10_test_top1": 0.9297, "cifar10_test_top1_flip_tta": 0.9378},
        recipe="resnetkit train --config cifar10_resnet56 --data-dir CIFAR10_DIR --seed 0 (60 epochs, bf16)",
        source="resnetkit; trained on the 50,000 CIFAR-10 training images (the last epoch's weights)",
        training={
            "recipe": "cifar10_resnet56",
            "seed": 0,
            "precision": "bf16 autocast",
            "minutes": 171.2,  # the epochs' training time summed: resumed across sessions, partly shared CPU
            "command": "resnetkit train --config cifar10_resnet56 --data-dir CIFAR10_DIR --seed 0",
            "cpu": "AMD EPYC (Zen 5; avx512_bf16 avx512_vnni, no AMX), 2 threads",
        },
    ),
)


_TIMM_RELEASES = "https://github.com/huggingface/pytorch-image-models/releases/download/"
# Common timm ResNet weights whose release file names carry their hash (timm's pretrained cfgs: URL, input size,
# crop_pct, interpolation). timm's key names equal torchvision's, so they load unchanged (tests/test_parity.py).
_TIMM: tuple[tuple[str, str, int, float, str], ...] = (
    ("resnet18.a1_in1k", "v0.1-rsb-weights/resnet18_a1_0-d63eafa0.pth", 224, 0.95, "bicubic"),
    ("resnet34.a1_in1k", "v0.1-rsb-weights/resnet34_a1_0-46f8f793.pth", 224, 0.95, "bicubic"),
    ("resnet50.a1_in1k", "v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth", 224, 0.95, "bicubic"),
    ("resnet50.a3_in1k", "v0.1-rsb-weights/resnet50_a3_0-59cae1ef.pth", 160, 0.95, "bicubic"),
    ("resnet50.ram_in1k", "v0.1-weights/resnet50_ram-a26f946b.pth", 224, 0.875, "bicubic"),
)


def _entries() -> dict[str, WeightsEntry]:
    entries = {e.name: e for e in _SHIPPED_ENTRIES}
    tv = _torchvision_entries()
    entries.update({e.name: e for e in tv})
    entries.update({e.name: e for e in _torchvision_task_entries()})
    imagenet_classes = tv[0].classes
    for name, path, size, crop_pct, interpolation in _TIMM:
        entries[name] = WeightsEntry(
            name=name,
            url=_TIMM_RELEASES + path,
            sha256=hub_hash_prefix(path) or "",
            num_classes=1000,
            classes=imagenet_classes,
            data_config=DataConfig((3, size, size), IMAGENET_MEAN, IMAGENET_STD, interpolation, crop_pct),
            recipe="timm (ResNet strikes back, Wightman et al. 2021, for a1/a3)",
            source="timm",
        )
    return entries


def _torchvision_entries() -> list[WeightsEntry]:
    """torchvision's published ImageNet weights for the ResNet family, read from its own Weights enums (so the
    URLs, categories, metrics and preprocessing are never retyped). V1 -> "tv_in1k", V2 -> "tv2_in1k"."""
    import torchvision

    out = []
    for arch in (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "wide_resnet50_2",
        "wide_resnet101_2",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
    ):
        for w in torchvision.models.get_model_weights(arch):
            tag = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}.get(w.name)
            if tag is None:
                continue
            t = w.transforms()
            crop = t.crop_size[0]
            out.append(
                WeightsEntry(
                    name=f"{arch}.{tag}",
                    url=w.url,
                    sha256=hub_hash_prefix(w.url) or "",
                    num_classes=len(w.meta["categories"]),
                    classes=tuple(w.meta["categories"]),
                    data_config=DataConfig(
                        (3, crop, crop), tuple(t.mean), tuple(t.std), t.interpolation.value, crop / t.resize_size[0]
                    ),
                    metrics={
                        f"imagenet_{k.replace('@', '')}": v / 100 for k, v in w.meta["_metrics"]["ImageNet-1K"].items()
                    },  # noqa: E501
                    recipe=w.meta.get("recipe", ""),
                    source="torchvision",
                )
            )
    return out


# torchvision's COCO detectors and COCO-with-VOC-labels segmenters, registered as "<torchvision builder>.tv_coco"
# with the arguments that build the same network on a resnetkit backbone (tasks.create_detector / create_segmenter).
# The first detectors' COCO_V1 files were trained with FrozenBatchNorm eps 0: torchvision's own builders call
# overwrite_eps(model, 0.0) for exactly these four, and so does resnetkit (frozen_bn_eps).
_TV_TASKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fasterrcnn_resnet50_fpn", "COCO_V1", {"kind": "fasterrcnn", "frozen_bn_eps": 0.0}),
    ("fasterrcnn_resnet50_fpn_v2", "COCO_V1", {"kind": "fasterrcnn_v2"}),
    ("retinanet_resnet50_fpn", "COCO_V1", {"kind": "retinanet", "frozen_bn_eps": 0.0}),
    ("retinanet_resnet50_fpn_v2", "COCO_V1", {"kind": "retinanet_v2"}),
    ("maskrcnn_resnet50_fpn", "COCO_V1", {"kind": "maskrcnn", "frozen_bn_eps": 0.0}),
    ("maskrcnn_resnet50_fpn_v2", "COCO_V1", {"kind": "maskrcnn_v2"}),
    ("keypointrcnn_resnet50_fpn", "COCO_V1", {"kind": "keypointrcnn", "frozen_bn_eps": 0.0}),
    ("fcn_resnet50", "COCO_WITH_VOC_LABELS_V1", {"kind": "fcn", "aux_loss": True}),
    ("fcn_resnet101", "COCO_WITH_VOC_LABELS_V1", {"kind": "fcn", "aux_loss": True}),
    ("deeplabv3_resnet50", "COCO_WITH_VOC_LABELS_V1", {"kind": "deeplabv3", "aux_loss": True}),
    ("deeplabv3_resnet101", "COCO_WITH_VOC_LABELS_V1", {"kind": "deeplabv3", "aux_loss": True}),
)


def _torchvision_task_entries() -> list[WeightsEntry]:
    """_TV_TASKS read from torchvision's Weights enums: URL, categories, COCO metrics, preprocessing. Detectors take
    0..1 images and normalise inside (GeneralizedRCNNTransform, min side 800); segmenters take ImageNet-normalised
    images resized to 520."""
    import torchvision

    out = []
    for tv_name, member, build in _TV_TASKS:
        w = torchvision.models.get_model_weights(tv_name)[member]
        task = "segmentation" if tv_name.startswith(("fcn", "deeplab")) else "detection"
        if task == "detection":
            data = DataConfig((3, 800, 800), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 1.0)
        else:
            data = DataConfig((3, 520, 520), IMAGENET_MEAN, IMAGENET_STD, "bilinear", 1.0)
        extra = {"num_keypoints": len(w.meta["keypoint_names"])} if "keypoint_names" in w.meta else {}
        metrics = {
            f"{dataset.lower().replace('-', '_')}_{k}": v / 100
            for dataset, m in w.meta["_metrics"].items()
            for k, v in m.items()
        }
        out.append(
            WeightsEntry(
                name=f"{tv_name}.tv_coco",
                url=w.url,
                sha256=hub_hash_prefix(w.url) or "",
                num_classes=len(w.meta["categories"]),
                classes=tuple(w.meta["categories"]),
                data_config=data,
                metrics=metrics,
                recipe=w.meta.get("recipe", ""),
                source="torchvision",
                task=task,
                build={"backbone": tv_name.split("_")[1], **build, **extra},
            )
        )
    return out


_CACHE: dict[str, WeightsEntry] | None = None


def list_weights(pattern: str | None = None) -> list[WeightsEntry]:
    """All registered weights (shipped first), optionally filtered by a shell-style pattern on the name."""
    import fnmatch

    global _CACHE
    if _CACHE is None:
        _CACHE = _entries()
    return [e for n, e in _CACHE.items() if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def get_weights(name: str) -> WeightsEntry:
    for e in list_weights():
        if e.name == name:
            return e
    import difflib

    close = difflib.get_close_matches(name, [e.name for e in list_weights()], n=4)
    hint = f"; did you mean: {', '.join(close)}" if close else "; `resnetkit models --weights` lists them"
    raise WeightsError(f"unknown weights {name!r}{hint}")


def get_classification_weights(name: str) -> WeightsEntry:
    """get_weights for what classifies images (eval, predict, serve, teachers): detection and segmentation weights
    are a one-line error naming the command that runs them."""
    entry = get_weights(name)
    if entry.task != "classification":
        command = "detect" if entry.task == "detection" else "segment"
        raise WeightsError(f"{name} are {entry.task} weights, not a classifier: run them with `resnetkit {command}`")
    return entry


def is_weights_name(text: str) -> bool:
    """A registry name looks like "arch.tag" and is not an existing file or a URL."""
    return (
        "." in text
        and not os.path.exists(text)
        and "/" not in text
        and not text.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def resolve_weights_file(entry: WeightsEntry, *, progress: bool = True) -> Path:
    """The verified local file of `entry`: the shipped copy, or the cached/downloaded one."""
    if entry.shipped:
        return SHIPPED / entry.url
    if os.environ.get(OFFLINE_ENV) == "1":
        target = cache_dir() / "weights" / entry.url.rsplit("/", 1)[-1]
        if not target.is_file():
            raise WeightsError(f"{entry.name} is not cached and {OFFLINE_ENV}=1: download {entry.url} to {target}")
        if not sha256_file(target).startswith(entry.sha256):
            raise WeightsError(
                f"cached {target} is corrupt (sha256 mismatch) and {OFFLINE_ENV}=1: download {entry.url} again"
            )
    sha = entry.sha256 if len(entry.sha256) == 64 else None
    return download_url(entry.url, sha, progress=progress)
