"""Issue 20: torchvision's detectors and segmenters on resnetkit backbones give torchvision's own models' outputs
(boxes, scores, labels, masks, keypoints, segmentation logits) with identical random weights, on real photos;
torchvision's state dicts load key for key."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import detection, segmentation

from resnetkit.errors import ModelArgumentError
from resnetkit.tasks import create_detector, create_segmenter

from conftest import randomize_norm_stats, shared_data

SMALL = {"min_size": 160, "max_size": 240, "box_score_thresh": 0.0}  # random weights score low: keep every box
TORCHVISION = {
    "fasterrcnn": detection.fasterrcnn_resnet50_fpn,
    "fasterrcnn_v2": detection.fasterrcnn_resnet50_fpn_v2,
    "retinanet": detection.retinanet_resnet50_fpn,
    "retinanet_v2": detection.retinanet_resnet50_fpn_v2,
    "maskrcnn": detection.maskrcnn_resnet50_fpn,
    "maskrcnn_v2": detection.maskrcnn_resnet50_fpn_v2,
    "keypointrcnn": detection.keypointrcnn_resnet50_fpn,
}


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    from torchvision.io import decode_jpeg, read_file

    folder = shared_data("cats_vs_dogs") / "val"
    paths = [sorted((folder / c).glob("*.jpg"))[0] for c in ("cat", "dog")]
    return [decode_jpeg(read_file(str(p))).float() / 255 for p in paths]


def _same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        if ours[key].is_floating_point():
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TORCHVISION))
def test_detectors_equal_torchvision_with_the_same_weights(kind: str, photos) -> None:
    torch.manual_seed(0)
    # RetinaNet's own names; 25 boxes an image, not 100 (300): the mask and keypoint heads run once per box
    retina = kind.startswith("retinanet")
    small = SMALL | ({"score_thresh": 0.0, "detections_per_img": 25} if retina else {"box_detections_per_img": 25})
    theirs = randomize_norm_stats(TORCHVISION[kind](weights=None, weights_backbone=None, **small)).eval()
    ours = create_detector(kind, "resnet50", **small).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # key for key
    kinds = [(n, type(m).__name__) for n, m in ours.named_modules() if not isinstance(m, torch.nn.Identity)]
    assert kinds == [(n, type(m).__name__) for n, m in theirs.named_modules()]  # same layers, same norms, same order
    with torch.no_grad():
        got, want = ours(photos), theirs(photos)
    assert len(want[0]["boxes"]) > 0
    for g, w in zip(got, want, strict=True):
        _same(g, w)


@pytest.mark.parametrize(
    ("kind", "builder"), [("fcn", segmentation.fcn_resnet50), ("deeplabv3", segmentation.deeplabv3_resnet50)]
)
def test_segmenters_equal_torchvision_with_the_same_weights(kind: str, builder, photos) -> None:
    torch.manual_seed(0)
    theirs = randomize_norm_stats(builder(weights=None, weights_backbone=None, aux_loss=True)).eval()
    ours = create_segmenter(kind, "resnet50", aux_loss=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.stack([torchvision.transforms.functional.resize(p, [160, 160], antialias=True) for p in photos])
    with torch.no_grad():
        _same(dict(ours(x)), dict(theirs(x)))


def test_other_backbones_and_bad_requests() -> None:
    model = create_detector("fasterrcnn", "resnet18", num_classes=3, min_size=128, max_size=160).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 120, 150)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    assert model.backbone.body.layer4[0].conv1.in_channels == 256  # resnetkit's resnet18 under the FPN
    seg = create_segmenter("deeplabv3", "resnet34", num_classes=5, output_stride=16).eval()
    with torch.no_grad():
        assert seg(torch.rand(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)
    with pytest.raises(ModelArgumentError, match="CIFAR network"):
        create_detector("fasterrcnn", "resnet20")
    with pytest.raises(ModelArgumentError, match="unknown detector"):
        create_detector("yolo", "resnet50")
