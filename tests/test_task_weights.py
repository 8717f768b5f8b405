"""Issue 20: torchvision's COCO detection / segmentation weights registered by name, downloaded from a 127.0.0.1
server (never the internet), verified by their hash and loaded into the resnetkit-backed models so that they give
torchvision's own model's outputs; `resnetkit detect` / `segment` write JSON and PNG overlays; bad input is one
line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.detection import faster_rcnn
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc

from resnetkit.cli.main import main
from resnetkit.errors import WeightsError
from resnetkit.layers import FrozenBatchNorm2d
from resnetkit.tasks.pretrained import build_task_model, create_task_model, task_architecture
from resnetkit.weights import registry

from conftest import pin_precision, shared_data

COCO = [e for e in registry.list_weights("*.tv_coco")]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics and affine terms of every BatchNorm (frozen or not) made non-trivial, so that eps matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            n = m.running_var.shape[0]
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            var = torch.rand(n, generator=g) * 1e-3 + 1e-4  # small, so that eps 0 vs 1e-5 changes the scale by ~5%
            m.running_var.copy_(var)
            m.weight.data.copy_(var.sqrt() * (torch.rand(n, generator=g) * 0.4 + 0.8))  # scales near 1
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _serve(entry_name: str, state: dict[str, torch.Tensor], root: Path, base: str, monkeypatch) -> str:
    """Write `state` under torch.hub's hash-in-name convention, as download.pytorch.org names torchvision's files, and
    point the registered entry at the 127.0.0.1 copy; returns the file's hash."""
    tmp = root / "weights.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    entry = registry.get_weights(entry_name)
    stem = entry.url.rsplit("/", 1)[-1].rsplit("-", 1)[0]
    tmp.rename(root / f"{stem}-{digest[:8]}.pth")
    served = dataclasses.replace(entry, url=f"{base}/{stem}-{digest[:8]}.pth", sha256=digest[:8])
    monkeypatch.setattr(registry, "_CACHE", {**{e.name: e for e in registry.list_weights()}, entry.name: served})
    return digest


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    from torchvision.io import decode_jpeg, read_file

    path = sorted((shared_data("cats_vs_dogs") / "val" / "dog").glob("*.jpg"))[0]
    return decode_jpeg(read_file(str(path))).float() / 255


def test_every_coco_entry_builds_the_architecture_torchvision_loads_its_file_into() -> None:
    assert len(COCO) == 11
    for entry in COCO:
        tv_name = entry.architecture
        member = "COCO_V1" if entry.task == "detection" else "COCO_WITH_VOC_LABELS_V1"
        assert entry.url == torchvision.models.get_model_weights(tv_name)[member].url
        with torch.device("meta"):
            ours = task_architecture(entry)
            extra = {"aux_loss": True} if entry.task == "segmentation" else {}
            theirs = torchvision.models.get_model(
                tv_name, weights=None, weights_backbone=None, num_classes=entry.num_classes, **extra
            )
        # torchvision's COCO_V1 detectors were saved with FrozenBatchNorm (no counter); it builds BatchNorm without
        # weights, so the counters are left out on both sides
        shapes = [
            {k: v.shape for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
            for m in (ours, theirs)
        ]
        assert shapes[0] == shapes[1], tv_name
        frozen = any(isinstance(m, FrozenBatchNorm2d) for m in ours.modules())
        assert frozen == ("frozen_bn_eps" in entry.build), tv_name  # v1 detectors: frozen, as their files were


def test_coco_detector_downloads_verifies_and_equals_torchvision(server, photo, tmp_path, monkeypatch) -> None:
    """fasterrcnn_resnet50_fpn.tv_coco as torchvision builds it for its COCO_V1 file (FrozenBatchNorm, eps 0)."""
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=misc.FrozenBatchNorm2d), 3)
    small = {"min_size": 256, "max_size": 384, "box_score_thresh": 0.0}
    theirs = _randomize_norms(faster_rcnn.FasterRCNN(backbone, 91, **small)).eval()
    _serve("fasterrcnn_resnet50_fpn.tv_coco", theirs.state_dict(), root, base, monkeypatch)
    overwrite_eps(theirs, 0.0)  # what torchvision's builder does after loading exactly this file
    ours = create_task_model("fasterrcnn_resnet50_fpn.tv_coco", **small)
    assert (tmp_path / "home" / "weights").is_dir() and not ours.training
    assert {m.eps for m in ours.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    with torch.no_grad():
        got, want = ours([photo])[0], theirs([photo])[0]
    assert len(want["boxes"]) > 0
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
    assert torch.equal(got["labels"], want["labels"])


def test_a_file_that_does_not_match_its_hash_is_refused(server, tmp_path, monkeypatch) -> None:
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    with torch.device("meta"):
        shapes = build_task_model("segmentation", "fcn", {"num_classes": 21, "aux_loss": True}).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    _serve("fcn_resnet50.tv_coco", state, root, base, monkeypatch)
    served = next(root.glob("fcn_resnet50_coco-*.pth"))
    blob = bytearray(served.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed after the hash was taken
    served.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create_task_model("fcn_resnet50.tv_coco")


def test_segment_cli_writes_json_and_an_overlay_equal_to_torchvision(server, photo, tmp_path, monkeypatch, capsys):
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    _serve("deeplabv3_resnet50.tv_coco", theirs.state_dict(), root, base, monkeypatch)
    ours = create_task_model("deeplabv3_resnet50.tv_coco")
    x = torch.nn.functional.interpolate(photo[None], size=(96, 128), mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], theirs.eval()(x)["out"], rtol=1e-4, atol=1e-4)
    image = shared_data("cats_vs_dogs") / "val" / "cat"
    path = sorted(image.glob("*.jpg"))[0]
    code, out, err = cli(
        capsys,
        "segment",
        "--checkpoint",
        "deeplabv3_resnet50.tv_coco",
        str(path),
        "--out",
        str(tmp_path / "seg"),
        "--min-share",
        "0",
        "--json",
    )
    assert code == 0, err
    (record,) = json.loads(out)
    with Image.open(path) as im:
        assert (record["width"], record["height"]) == im.size
    assert sum(c["share"] for c in record["classes"]) == pytest.approx(1.0, abs=1e-3)
    assert {c["label"] for c in record["classes"]} <= set(registry.get_weights("deeplabv3_resnet50.tv_coco").classes)
    with Image.open(record["overlay"]) as overlay:
        assert overlay.size == (record["width"], record["height"])


def test_detect_cli_boxes_inside_the_image_and_an_overlay(server, tmp_path, monkeypatch, capsys) -> None:
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    torch.manual_seed(0)
    theirs = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)
    _serve("retinanet_resnet50_fpn_v2.tv_coco", theirs.state_dict(), root, base, monkeypatch)
    path = sorted((shared_data("cats_vs_dogs") / "val" / "dog").glob("*.jpg"))[1]
    code, out, err = cli(
        capsys,
        "detect",
        "--checkpoint",
        "retinanet_resnet50_fpn_v2.tv_coco",
        str(path),
        "--out",
        str(tmp_path / "det"),
        "--score",
        "0.0",
        "--json",
    )
    assert code == 0, err
    (record,) = json.loads(out)
    assert record["detections"], "a random RetinaNet still keeps its top boxes at score 0"
    classes = registry.get_weights("retinanet_resnet50_fpn_v2.tv_coco").classes
    for d in record["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
        assert d["label"] == classes[d["label_id"]] and 0 <= d["score"] <= 1
    with Image.open(record["overlay"]) as overlay, Image.open(path) as original:
        assert overlay.size == original.size
        assert overlay.convert("RGB").tobytes() != original.convert("RGB").tobytes()  # boxes were drawn


def test_wrong_kind_of_model_is_one_line(tmp_path: Path, capsys) -> None:
    photo = sorted((shared_data("cats_vs_dogs") / "val" / "cat").glob("*.jpg"))[0]
    for args, message in (
        (["detect", "--checkpoint", "resnet20.rk_cifar10", str(photo)], "classification weights"),
        (["segment", "--checkpoint", "fasterrcnn_resnet50_fpn.tv_coco", str(photo)], "is a detection model"),
        (["predict", "--checkpoint", "maskrcnn_resnet50_fpn.tv_coco", str(photo)], "`resnetkit detect`"),
        (["detect", "--checkpoint", "resnet20.rk_cifar10", str(photo), "--score", "2"], "between 0 and 1"),
    ):
        code, _, err = cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_a_classification_checkpoint_passed_to_detect_is_one_line(tmp_path: Path, capsys) -> None:
    from resnetkit import create_model
    from resnetkit.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "r20.pt", create_model("resnet20"), classes=["a"] * 10, preprocessing={})
    photo = sorted((shared_data("cats_vs_dogs") / "val" / "cat").glob("*.jpg"))[0]
    code, _, err = cli(capsys, "detect", "--checkpoint", str(ckpt), str(photo))
    assert code == 2 and err.count("\n") == 1
    assert "is a classification model (resnet20), not a detection one: run it with `resnetkit predict`" in err
