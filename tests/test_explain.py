"""Grad-CAM / Grad-CAM++: shapes on every kind of model, hooks always released, the maps find the one region that
decides the class, the randomisation sanity check (Adebayo et al., 2018), and the `explain` command's bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetkit.checkpoint import save_checkpoint
from resnetkit.cli.main import main
from resnetkit.explain import ExplainError, GradCAM, UnknownLayerError, grad_cam, randomization_similarity
from resnetkit.explain.gradcam import cam_from_gradients
from resnetkit.models import BasicBlock, ResNet, create_model
from resnetkit.models.zoo import CIFAR_CFG
from resnetkit.transforms import preprocessing_for

REGION = (slice(4, 12), slice(20, 28))  # rows, columns of the square that alone decides the class


pytestmark = pytest.mark.usefixtures("one_thread")


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "size", "layers", "default"),
    [
        ("resnet20", 32, ["relu", "layer1", "layer2", "layer3.2"], "layer3"),
        ("plain20", 32, ["layer2"], "layer3"),
        ("preact_resnet110", 32, ["layer3"], "act"),
        ("resnet18", 64, ["maxpool", "layer3"], "layer4"),
    ],
)
def test_maps_have_the_input_shape_for_every_layer_and_method(name, size, layers, default) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(3, 3, size, size)
    for layer in [None, *layers]:
        for method in ("gradcam", "gradcam++"):
            result = grad_cam(model, x, layer=layer, method=method)
            assert result.maps.shape == (3, size, size) and result.target.shape == (3,)
            assert result.logits.shape == (3, 7) and result.layer == (layer or default)
            assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) == pytest.approx(1.0)
    assert _hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_gradcam_equals_the_definition_on_the_last_feature_map() -> None:
    torch.manual_seed(1)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x).detach().requires_grad_(True)
    logits = model.forward_head(features)
    (grads,) = torch.autograd.grad(logits.max(dim=1).values.sum(), features)
    cam = (grads.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True).clamp(min=0).detach()
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False).squeeze(1)
    expected = cam / cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    torch.testing.assert_close(grad_cam(model, x).maps, expected, atol=1e-5, rtol=1e-4)


def test_gradcam_plus_plus_weights_follow_the_alpha_formula() -> None:
    act = torch.rand(1, 2, 3, 3)
    grads = torch.randn(1, 2, 3, 3)
    g2, g3 = grads**2, grads**3
    alpha = g2 / (2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3)
    weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    expected = (weights * act).sum(dim=1).clamp(min=0)
    torch.testing.assert_close(cam_from_gradients(act, grads, "gradcam++"), expected)


def test_hooks_are_released_after_use_and_after_errors() -> None:
    model = create_model("resnet20").train()
    with GradCAM(model, "layer2") as cam:
        assert _hooks(model) == 1 and not model.training
        cam(torch.randn(1, 3, 32, 32))
    assert _hooks(model) == 0 and model.training
    with pytest.raises(RuntimeError, match="boom"), GradCAM(model) as cam:
        raise RuntimeError("boom")
    assert _hooks(model) == 0
    with pytest.raises(ExplainError, match="1 channel"):
        grad_cam(model, torch.randn(1, 1, 32, 32))
    assert _hooks(model) == 0 and model.training


def test_bad_layers_and_inputs_are_one_line_errors() -> None:
    model = create_model("resnet20")
    with pytest.raises(UnknownLayerError) as err:
        grad_cam(model, torch.randn(1, 3, 32, 32), layer="layer4")
    assert str(err.value) == (
        "unknown layer 'layer4'; valid layers: conv1, bn1, relu, layer1, layer2, layer3 "
        "(or a block inside a stage, e.g. layer3.0)"
    )
    with pytest.raises(UnknownLayerError):
        grad_cam(model, torch.randn(1, 3, 32, 32), layer="layer3.99")
    with pytest.raises(ExplainError, match="too small: the model downsamples by 4"):
        grad_cam(model, torch.randn(1, 3, 2, 2))
    with pytest.raises(ExplainError, match="unknown method"):
        grad_cam(model, torch.randn(1, 3, 32, 32), method="cam")


def _region_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; the class is the sign of a square at REGION; a square of random sign elsewhere distracts."""
    x = torch.randn(n, 3, 32, 32, generator=gen) * 0.5
    y = torch.randint(0, 2, (n,), generator=gen)
    x[:, :, REGION[0], REGION[1]] += 2 * (2 * y - 1).float().view(n, 1, 1, 1)
    for i in range(n):
        while True:
            r, c = torch.randint(0, 25, (2,), generator=gen).tolist()
            if r >= REGION[0].stop + 2 or c + 8 <= REGION[1].start - 2:
                break
        x[i, :, r : r + 8, c : c + 8] += 2.0 if torch.rand(1, generator=gen) < 0.5 else -2.0
    return x, y


@pytest.fixture(scope="module")
def region_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """An 8-layer ResNet trained to read the class from REGION only (about 8 s on one core)."""
    gen = torch.Generator().manual_seed(0)
    x, y = _region_data(512, gen)
    torch.manual_seed(0)
    model = ResNet(
        BasicBlock, (1, 1, 1), widths=(8, 16, 32), stem="cifar", num_classes=2, shortcut="A", default_cfg=CIFAR_CFG
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        index = torch.randint(0, len(y), (64,), generator=gen)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_test, y_test = _region_data(64, gen)
    return model.eval(), x_test, y_test


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_map_peaks_in_the_region_that_decides_the_class(region_model, method: str) -> None:
    model, x, y = region_model
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) >= 0.95  # it did learn the task
    maps = grad_cam(model, x, method=method).maps
    peak = maps.flatten(1).argmax(dim=1)
    rows, cols = peak // 32, peak % 32
    margin = 4  # one cell of the 8x8 map that is explained
    near = (rows >= REGION[0].start - margin) & (rows < REGION[0].stop + margin)
    near &= (cols >= REGION[1].start - margin) & (cols < REGION[1].stop + margin)
    inside = (rows >= REGION[0].start) & (rows < REGION[0].stop) & (cols >= REGION[1].start) & (cols < REGION[1].stop)
    assert float(inside.float().mean()) >= 0.75 and float(near.float().mean()) >= 0.9
    in_region = maps[:, REGION[0], REGION[1]].mean()
    assert float(in_region) > 3 * float((maps.sum(dim=(1, 2)).mean() - in_region * 64) / (1024 - 64))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_change_when_the_weights_are_randomised(region_model, method: str) -> None:
    model, x, _ = region_model
    x = x[:16]
    same = grad_cam(model, x, method=method).maps
    assert torch.equal(same, grad_cam(model, x, method=method).maps)  # deterministic: a change means something
    similarity = randomization_similarity(model, x, method=method)
    assert float(similarity.mean()) < 0.5, similarity
    cascade = randomization_similarity(model, x, method=method, down_to="layer3")  # only the top stage and head
    assert float(cascade.mean()) < 0.9
    assert _hooks(model) == 0


# --- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) resnet20 checkpoint with the CIFAR-10 classes: enough for the command's plumbing."""
    from resnetkit.data.cifar import load_sample

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    classes = load_sample("test").classes
    save_checkpoint(
        path,
        create_model("resnet20"),
        classes=classes,
        preprocessing=preprocessing_for(CIFAR_CFG, "cifar").to_dict(),
        config={},
    )
    return path


def _image(path: Path, mode: str = "RGB", size: int = 32) -> Path:
    gen = torch.Generator().manual_seed(size)
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=gen).numpy()
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_writes_one_overlay_per_image(checkpoint: Path, tmp_path: Path, capsys) -> None:
    images = [_image(tmp_path / "a.png"), _image(tmp_path / "b.jpg", size=48), _image(tmp_path / "c.png", "RGBA")]
    out = tmp_path / "cams"
    code, stdout, err = cli(
        capsys, "explain", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(out), "--json"
    )
    assert code == 0, err
    records = json.loads(stdout)
    assert [r["path"] for r in records] == [str(i) for i in images]
    assert sorted(p.name for p in out.iterdir()) == ["a-cam.png", "b-cam.png", "c-cam.png"]
    for r in records:
        assert r["layer"] == "layer3" and r["methods"] == ["gradcam", "gradcam++"] and 0 < r["prob"] <= 1
        assert Image.open(r["out"]).size[0] > 300  # image + two overlays side by side
    first = records[0]
    assert first["explained_class"] == first["class"] and first["explained_prob"] == first["prob"]  # default
    width_both = Image.open(first["out"]).size[0]
    other = next(c for c in ("cat", "dog") if c != first["class"])  # a class the model did not predict
    flags = ["--layer", "layer2.1", "--method", "gradcam++", "--class", other]
    code, stdout, err = cli(
        capsys, "explain", "--checkpoint", str(checkpoint), str(images[0]), "--out", str(out), *flags, "--json"
    )
    assert code == 0, err
    (r,) = json.loads(stdout)
    # --layer, --method and --class took effect; the prediction itself is the same as without them
    assert r["layer"] == "layer2.1" and r["methods"] == ["gradcam++"] and r["explained_class"] == other
    assert r["class"] == first["class"] and r["prob"] == pytest.approx(first["prob"], abs=1e-6)
    assert r["explained_prob"] < r["prob"]  # not the most probable class
    assert Image.open(r["out"]).size[0] < width_both  # one overlay instead of two
    code, stdout, err = cli(
        capsys, "explain", "--checkpoint", str(checkpoint), str(images[0]), "--out", str(out), *flags
    )
    assert code == 0, err
    assert stdout == f"{images[0]}: {r['class']} {100 * r['prob']:.1f}% -> {out / 'a-cam.png'}\n"


GREY = "is a greyscale image (mode L); the model takes colour (RGB)"
TINY = "is 8x8; the model takes 32x32 images and needs at least 16x16"


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda d: _image(d / "grey.png", "L"), ["--strict"], GREY),
        (lambda d: _image(d / "tiny.png", size=8), ["--strict"], TINY),
        (lambda d: _image(d / "ok.png"), ["--layer", "layer9"], "unknown layer 'layer9'; valid layers: conv1, bn1"),
        (lambda d: _image(d / "ok.png"), ["--class", "unicorn"], "unknown class 'unicorn'; the model's classes: "),
        (lambda d: d / "missing.png", [], "missing.png does not exist"),
    ],
)
def test_explain_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, make, extra, message) -> None:
    image = make(tmp_path)
    code, _, err = cli(
        capsys, "explain", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o"), *extra
    )
    assert code == 2 and message in err
    assert err.startswith("resnetkit: error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_refused_images_are_reported_and_the_others_explained(checkpoint, tmp_path, capsys) -> None:
    images = [_image(tmp_path / "grey.png", "L"), _image(tmp_path / "ok.png"), _image(tmp_path / "tiny.png", size=8)]
    code, stdout, err = cli(
        capsys, "explain", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(tmp_path / "o")
    )
    assert code == 3 and stdout.startswith(f"{images[1]}: ") and stdout.count("\n") == 1
    assert err.splitlines() == [
        f"resnetkit: warning: {images[0]} {GREY} images",
        f"resnetkit: warning: {images[2]} {TINY}",
    ]
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["ok-cam.png"]


def test_overlay_blends_jet_colours_half_over_the_image() -> None:
    """On a black 32x32 image, a map of ones draws jet's top colour (dark red, (0.5, 0, 0)) at half strength and
    a map of zeros its bottom colour (dark blue); the picture is upscaled to 256 px a side."""
    from resnetkit.explain.overlay import overlay_image

    black = torch.zeros(3, 32, 32, dtype=torch.uint8)
    hot = np.asarray(overlay_image(black, torch.ones(32, 32)))
    cold = np.asarray(overlay_image(black, torch.zeros(32, 32)))
    assert hot.shape == (256, 256, 3)
    assert np.allclose(hot.reshape(-1, 3).mean(0), [64, 0, 0], atol=1.5)
    assert np.allclose(cold.reshape(-1, 3).mean(0), [0, 0, 64], atol=1.5)
