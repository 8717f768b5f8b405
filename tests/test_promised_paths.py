"""Issue 28: README / docs promises that had no test, each through the real CLI on real files.

- `resnetkit distill` with a registered teacher (`resnet20.rk_cifar10`, shipped), `--kd-weight` and
  `--kd-temperature` taking effect (docs/compress.md "Distillation");
- CIFAR-100 in both official releases (python pickles and binary records) through `train` and `eval` (README);
- detection fine-tuning from a `*.tv_coco` weights file downloaded from 127.0.0.1 and verified (docs/tasks.md);
- what the prune criteria `l2`, `group` and `random` keep (docs/compress.md "Which channels").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import faster_rcnn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc

from resnetkit.checkpoint import save_checkpoint
from resnetkit.cli.main import main
from resnetkit.compress import prune_to_macs
from resnetkit.compress.prune import blocks_by_stage
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for
from resnetkit.weights import registry

from conftest import pin_precision, require_module, shared_data

require_module("torch_pruning")  # the [compress] extra: `resnetkit prune`

RECORD = 1 + 3 * 32 * 32  # a CIFAR-10 binary record: label byte, then the R, G and B planes
# every training run here: one thread, fp32, no progress bar
QUIET = ["--no-amp", "--threads", "1", "--no-progress"]
NARROW = ["--model", "resnet20", "--set", "model_kwargs={widths: [8, 16, 32]}"]  # a quarter of ResNet-20's widths


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None) -> None:
    """A private cache, never the network (the detection test allows 127.0.0.1 explicitly)."""
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 1. distillation from a registered teacher ----------------------------------------------------------------


def _records(path: Path, n: int) -> np.ndarray:
    """The first `n` records of a CIFAR-10 binary file, (n, 3073) uint8."""
    with path.open("rb") as f:
        return np.frombuffer(f.read(n * RECORD), np.uint8).reshape(n, RECORD)


def _cifar10_copy(root: Path, label_shift: int, per_file: int = 16, test: int = 20) -> Path:
    """A CIFAR-10 binary release of the first real records of each file, labels moved by `label_shift` (mod 10)."""
    source = shared_data("cifar-10-batches-bin")
    root.mkdir(parents=True)
    files = [(f"data_batch_{i}.bin", per_file) for i in range(1, 6)] + [("test_batch.bin", test)]
    for name, n in files:
        table = _records(source / name, n).copy()
        table[:, 0] = (table[:, 0] + label_shift) % 10
        (root / name).write_bytes(table.tobytes())
    shutil.copy(source / "batches.meta.txt", root)
    return root


def test_distill_from_a_registered_teacher_with_kd_weight_and_temperature(tmp_path: Path, capsys) -> None:
    """loss = (1 - w) CE + w T^2 KL: at w = 1 the labels carry no weight, so images whose labels were all changed
    train the same student bit for bit; w = 0.5 (the cross-entropy back) and T = 1 each train another student."""
    true = _cifar10_copy(tmp_path / "true", 0)
    moved = _cifar10_copy(tmp_path / "moved", 3)

    def distill(name: str, data: Path, weight: str, temperature: str) -> Path:
        run = tmp_path / name
        code, out, err = cli(
            capsys,
            "distill",
            "--teacher",
            "resnet20.rk_cifar10",
            "--kd-weight",
            weight,
            "--kd-temperature",
            temperature,
            "--data",
            "cifar10",
            "--data-dir",
            str(data),
            *NARROW,
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(run),
            *QUIET,
        )
        assert code == 0, err
        assert f"run {run}: completed after 2 steps" in out  # 80 images, batches of 32
        for config in (yaml.safe_load((run / "config.yaml").read_text()), _last(run)["config"]):
            assert config["teacher"] == "resnet20.rk_cifar10"
            assert (config["kd_weight"], config["kd_temperature"]) == (float(weight), float(temperature))
        return run

    w1 = _last(distill("w1", true, "1", "4"))
    assert w1["classes"] == list(registry.CIFAR10_CLASSES)  # the data's classes are the teacher's, in its order
    w1_moved = _last(distill("w1_moved", moved, "1", "4"))
    assert _same_weights(w1["model"], w1_moved["model"])
    assert not _same_weights(w1["model"], _last(distill("w1_t1", true, "1", "1"))["model"])  # only T differs
    assert not _same_weights(w1_moved["model"], _last(distill("w05_moved", moved, "0.5", "4"))["model"])  # only w


# --- 2. CIFAR-100, python and binary releases --------------------------------------------------------------------

# The official releases' label names (fine_label_names / coarse_label_names in the meta file), alphabetical.
FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()


def _write_cifar100(root: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """root/cifar-100-python/{train,test,meta} (protocol-2 pickles of numpy arrays whose keys and names are bytes, as
    the official Python 2 files unpickle, so the whitelisting unpickler resolves numpy and _codecs globals) and
    root/cifar-100-binary/{train,test}.bin (coarse byte, fine byte, 3072 pixels) + the label-name files, holding the
    same real CIFAR-10 images and the same fine labels (every class in train); returns each split's fine labels."""
    source = shared_data("cifar-10-batches-bin")
    python, binary = root / "cifar-100-python", root / "cifar-100-binary"
    python.mkdir(parents=True)
    binary.mkdir()
    rng = np.random.default_rng(0)
    labels = {}
    for split, name in (("train", "data_batch_1.bin"), ("test", "test_batch.bin")):
        n = sizes[split]
        pixels = _records(source / name, n)[:, 1:]
        fine = rng.permutation(np.arange(n) % 100).astype(np.uint8)
        coarse = (fine // 5).astype(np.uint8)  # not the real superclasses, but a byte unlike the fine one
        (binary / f"{split}.bin").write_bytes(np.concatenate([coarse[:, None], fine[:, None], pixels], 1).tobytes())
        batch = {
            b"filenames": [f"{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": split.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": coarse.tolist(),
            b"data": pixels.copy(),
        }
        (python / split).write_bytes(pickle.dumps(batch, protocol=2))
        labels[split] = fine.astype(np.int64)
    meta = {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE]}
    (python / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    (binary / "fine_label_names.txt").write_text("\n".join(FINE) + "\n")
    (binary / "coarse_label_names.txt").write_text("\n".join(COARSE) + "\n")
    return labels


def test_cifar100_python_and_binary_releases_train_and_eval_alike(tmp_path: Path, capsys) -> None:
    """The same 300 + 150 images in each release: 100 classes named by the meta file, the fine labels, every test
    record scored, and the two releases train the same weights and evaluate the same."""
    assert len(FINE) == 100 and len(COARSE) == 20 and FINE == sorted(FINE)
    labels = _write_cifar100(tmp_path / "c100", {"train": 300, "test": 150})
    runs, results = {}, {}
    for fmt in ("python", "binary"):
        folder = tmp_path / "c100" / f"cifar-100-{fmt}"
        runs[fmt] = tmp_path / f"run_{fmt}"
        code, _, err = cli(
            capsys,
            "train",
            "--data",
            "cifar100",
            "--data-dir",
            str(folder),
            *NARROW,
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(runs[fmt]),
            *QUIET,
        )
        assert code == 0, err
        code, out, err = cli(
            capsys,
            "eval",
            "--checkpoint",
            str(runs["python"]),
            "--data",
            "cifar100",
            "--data-dir",
            str(folder),
            "--json",
        )
        assert code == 0, err
        results[fmt] = json.loads(out)
    ckpt = _last(runs["python"])
    assert ckpt["classes"] == FINE and ckpt["model"]["fc.weight"].shape == (100, 32)
    # the same images and labels in the same order: the same training, bit for bit
    assert _same_weights(ckpt["model"], _last(runs["binary"])["model"])
    for fmt, res in results.items():
        assert res["n"] == 150 and res["classes"] == FINE, fmt
        # the fine label byte / fine_labels, not the coarse ones: each true class's row counts the file's labels
        assert [sum(row) for row in res["confusion_matrix"]] == np.bincount(labels["test"], minlength=100).tolist()
    differ = [k for k in results["python"] if results["python"][k] != results["binary"][k]]
    assert sorted(differ) == ["scored", "source"], differ  # only where the files are


# --- 3. detection fine-tuning from downloaded COCO weights -------------------------------------------------------

# Fewer proposals and sampled boxes than torchvision's defaults (as tests/test_detection_train.py)
SMALL = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "rpn_batch_size_per_image": 64,
}
COCO_WEIGHTS = "fasterrcnn_resnet50_fpn.tv_coco"


def _serve_coco_detector(root: Path, base: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """torchvision's Faster R-CNN v1 (FrozenBatchNorm, as its COCO_V1 file) with seeded random weights and
    non-trivial frozen statistics, saved under torch.hub's hash-in-name convention in the served folder; the
    registered entry points at the 127.0.0.1 copy. Returns the served state dict."""
    torch.manual_seed(1234)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=misc.FrozenBatchNorm2d), 3)
    model = faster_rcnn.FasterRCNN(backbone, 91)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, misc.FrozenBatchNorm2d):
            n = m.weight.shape[0]
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    state = model.state_dict()
    tmp = root / "weights.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    entry = registry.get_weights(COCO_WEIGHTS)
    stem = entry.url.rsplit("/", 1)[-1].rsplit("-", 1)[0]  # fasterrcnn_resnet50_fpn_coco
    name = f"{stem}-{digest[:8]}.pth"
    tmp.rename(root / name)
    served = dataclasses.replace(entry, url=f"{base}/{name}", sha256=digest[:8])
    monkeypatch.setattr(registry, "_CACHE", {**{e.name: e for e in registry.list_weights()}, entry.name: served})
    return state


def _write_tiny_coco(root: Path, n: int = 1, side: int = 128) -> Path:
    """root/train/ as Roboflow exports COCO: noise images, one box each, categories cat and dog."""
    folder = root / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": side, "height": side})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1 + i % 2,
                "bbox": [20, 30, 50, 40],
                "area": 2000,
                "iscrowd": 0,
            }
        )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


def test_detection_finetune_starts_from_served_coco_weights(server, tmp_path, monkeypatch, capsys) -> None:
    base, root = server
    served = _serve_coco_detector(root, base, monkeypatch)
    data = _write_tiny_coco(tmp_path / "coco")
    args = [
        "train",
        "--task",
        "detection",
        "--data",
        "coco",
        "--data-dir",
        str(data),
        "--detector",
        "fasterrcnn",
        "--model",
        "resnet50",
        "--weights",
        COCO_WEIGHTS,
        "--img-size",
        "128",
        "--batch-size",
        "1",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--lr",
        "0.001",
        "--set",
        f"model_kwargs={json.dumps(SMALL)}",
        *QUIET,
    ]
    # RESNETKIT_OFFLINE=1 (this file's default) never downloads: a one-line error naming the file
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "offline"))
    assert code == 2 and err.count("\n") == 1 and "is not cached and RESNETKIT_OFFLINE=1" in err, err
    monkeypatch.setenv("RESNETKIT_OFFLINE", "0")
    run = tmp_path / "run"
    code, out, err = cli(capsys, *args, "--out", str(run))
    assert code == 0, err
    (cached,) = (tmp_path / "home" / "weights").iterdir()
    assert cached.read_bytes() == next(root.glob("fasterrcnn_resnet50_fpn_coco-*.pth")).read_bytes()
    ckpt = _last(run)
    assert ckpt["task"] == "detection" and ckpt["config"]["weights"] == COCO_WEIGHTS and ckpt["step"] == 1
    trained = ckpt["model"]
    assert trained.keys() == served.keys()
    # the class layers are new (cat, dog and the background, not COCO's 91) ...
    assert trained["roi_heads.box_predictor.cls_score.weight"].shape == (3, 1024)
    assert served["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    # ... every other tensor came from the file: what does not train (conv1, layer1 and every frozen BatchNorm, as
    # torchvision's 3 trainable layers) still equals it; the backbone and FPN layers that trained moved from it by a
    # fraction of their norm (from an independent initialisation they would be about sqrt(2) x their norm away)
    norms = {k.rsplit(".", 1)[0] for k in served if k.endswith("running_var")}
    frozen = [
        k
        for k in served
        if k.startswith(("backbone.body.conv1.", "backbone.body.layer1.")) or k.rsplit(".", 1)[0] in norms
    ]
    assert len(frozen) > 200 and all(torch.equal(trained[k], served[k]) for k in frozen)
    trainable = [k for k in served if k.startswith("backbone.") and k not in frozen and served[k].norm() > 0]
    moved = {k: float((trained[k] - served[k]).norm() / served[k].norm()) for k in trainable}
    assert len(moved) == 13 * 3 + 3 + 8  # layer2..4's convs (13 bottlenecks, 3 shortcuts), the FPN's 8 convs
    assert 0 < max(moved.values()) < 0.3, sorted(moved.items(), key=lambda kv: -kv[1])[:3]
    for big in (cached, *root.glob("*.pth"), *(run / "checkpoints").glob("*.pt")):
        big.unlink()  # ~650 MB that pytest would otherwise keep for its last three sessions


# --- 4. prune criteria: what l2, group and random keep -----------------------------------------------------------


def _inner(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]]:
    """(conv1, bn1, conv2) of every basic block: conv1's output channels are the ones pruned."""
    return [(b.conv1, b.bn1, b.conv2) for stage in blocks_by_stage(model) for b in stage]


def _kept(old: torch.Tensor, new: torch.Tensor) -> list[int]:
    """Which of `old`'s filters (rows) `new` holds, found by value."""
    return [next(i for i in range(len(old)) if torch.equal(old[i], row)) for row in new]


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(scores.argsort(descending=True)[:k].tolist())


def _spike_and_flat_resnet20() -> nn.Module:
    """Every block's conv1 alternates a "spike" filter (one weight near 1: L1 = L2 near 1) and a "flat" one (0.02
    everywhere: L1 > 2.8, L2 < 0.3), all norms distinct: L2 keeps the spikes, L1 would keep the flats."""
    model = create_model("resnet20", num_classes=10).eval()
    with torch.no_grad():
        for conv, _, _ in _inner(model):
            w = torch.zeros_like(conv.weight)
            for c in range(w.shape[0]):
                if c % 2 == 0:
                    w[c, c % w.shape[1], 1, 1] = 1 + 0.01 * c
                else:
                    w[c] = 0.02 + 1e-4 * c
            conv.weight.copy_(w)
    return model


def _group_resnet20() -> nn.Module:
    """Every block's pruned channel c has a filter of L2 norm a_c, a BatchNorm scale b_c and next-conv input slice
    of L2 norm d_c, drawn independently: the group's norm sqrt(a^2 + b^2 + d^2) ranks unlike a (l2) or d alone."""
    model = create_model("resnet20", num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv1, bn1, conv2 in _inner(model):
            c = conv1.out_channels
            a, b, d = (torch.rand(c, generator=g) * 2 + 0.1 for _ in range(3))
            rows = torch.randn(conv1.weight.shape, generator=g)
            conv1.weight.copy_(rows * (a / rows.flatten(1).norm(dim=1))[:, None, None, None])
            bn1.weight.copy_(b)
            cols = torch.randn(conv2.weight.shape, generator=g)
            col_norms = cols.transpose(0, 1).flatten(1).norm(dim=1)
            conv2.weight.copy_(cols * (d / col_norms)[None, :, None, None])
    return model


def _group_scores(conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d) -> torch.Tensor:
    """Each channel's squared L2 norm over its whole group: filter, BatchNorm scale and the next conv's inputs."""
    return conv1.weight.pow(2).sum((1, 2, 3)) + bn1.weight.pow(2) + conv2.weight.pow(2).sum((0, 2, 3))


def _prefixes(model: nn.Module) -> list[str]:
    """The state-dict prefix of every basic block, in the order of `_inner`."""
    return [f"layer{s + 1}.{b}." for s, stage in enumerate(blocks_by_stage(model)) for b in range(len(stage))]


def _kept_per_block(original: nn.Module, pruned: dict[str, torch.Tensor]) -> list[list[int]]:
    """Per block, the indices of the original filters the pruned conv1 holds; its BatchNorm and the next conv's
    inputs must hold the same channels."""
    kept = []
    for (conv1, bn1, conv2), prefix in zip(_inner(original), _prefixes(original), strict=True):
        idx = _kept(conv1.weight, pruned[prefix + "conv1.weight"])
        assert torch.equal(pruned[prefix + "bn1.weight"], bn1.weight[idx])
        assert torch.equal(pruned[prefix + "conv2.weight"], conv2.weight[:, idx])
        kept.append(idx)
    return kept


def _prune_cli(capsys, tmp_path: Path, model: nn.Module, method: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """`resnetkit prune` of `model` saved as a checkpoint, fine-tuned 1 step; the pruned (not fine-tuned) weights."""
    source = save_checkpoint(
        tmp_path / "source.pt",
        model,
        classes=list(registry.CIFAR10_CLASSES),
        preprocessing=preprocessing_for(model.default_cfg, "cifar").to_dict(),
    )
    run = tmp_path / f"pruned_{method}"
    code, out, err = cli(
        capsys,
        "prune",
        "--checkpoint",
        str(source),
        "--target-macs",
        "0.5",
        "--method",
        method,
        "--data",
        "sample",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "16",
        "--train-subset",
        "16",
        "--test-subset",
        "20",
        "--seed",
        str(seed),
        "--out",
        str(run),
        *QUIET,
    )
    assert code == 0, err
    assert "% of its MACs" in out and json.loads((run / "prune.json").read_text())["method"] == method
    assert _last(run)["step"] == 1  # and the pruned network fine-tuned
    return load_file(run / "pruned.safetensors")


def _widths(model: nn.Module, pruned: dict[str, torch.Tensor]) -> list[int]:
    return [pruned[prefix + "conv1.weight"].shape[0] for prefix in _prefixes(model)]


def test_prune_l2_keeps_the_filters_with_the_largest_l2_norms(tmp_path: Path, capsys) -> None:
    model = _spike_and_flat_resnet20()
    pruned = _prune_cli(capsys, tmp_path, model, "l2")
    by_l2, by_l1 = [], []
    for (conv1, _, _), k in zip(_inner(model), _widths(model, pruned), strict=True):
        assert k < conv1.out_channels
        by_l2.append(_top(conv1.weight.flatten(1).norm(p=2, dim=1), k))
        by_l1.append(_top(conv1.weight.flatten(1).norm(p=1, dim=1), k))
    assert all(a != b for a, b in zip(by_l2, by_l1, strict=True))  # the model tells the two criteria apart
    assert _kept_per_block(model, pruned) == by_l2


def test_prune_group_keeps_the_channels_with_the_largest_group_norm(tmp_path: Path, capsys) -> None:
    model = _group_resnet20()
    pruned = _prune_cli(capsys, tmp_path, model, "group")
    blocks = list(zip(_inner(model), _widths(model, pruned), strict=True))
    by_group = [_top(_group_scores(*parts), k) for parts, k in blocks]
    by_filter = [_top(conv1.weight.flatten(1).norm(dim=1), k) for (conv1, _, _), k in blocks]  # what l2 keeps
    by_inputs = [_top(conv2.weight.pow(2).sum((0, 2, 3)), k) for (_, _, conv2), k in blocks]
    assert by_group != by_filter and by_group != by_inputs  # the model tells the group from its parts
    assert _kept_per_block(model, pruned) == by_group


def test_prune_random_is_seeded_and_ignores_the_norms(tmp_path: Path, capsys) -> None:
    model = _spike_and_flat_resnet20()
    from_cli = _kept_per_block(model, _prune_cli(capsys, tmp_path, model, "random", seed=7))
    torch.manual_seed(12345)  # another state of the global generator: the seed argument alone decides
    again = prune_to_macs(model, 0.5, "random", seed=7).model.state_dict()
    assert _kept_per_block(model, again) == from_cli  # `--seed 7` and seed=7: the same draw
    by_l2 = [
        _top(conv1.weight.flatten(1).norm(dim=1), len(k))
        for (conv1, _, _), k in zip(_inner(model), from_cli, strict=True)
    ]
    assert sum(a != b for a, b in zip(from_cli, by_l2, strict=True)) >= len(by_l2) - 1  # not a norm ranking
