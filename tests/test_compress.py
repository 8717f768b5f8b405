"""Issue 18: structured channel pruning (torch-pruning) and knowledge distillation, through the library and the CLI,
on real CIFAR-10 images and the shipped ResNet-20 weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnetkit.cli.main import main
from resnetkit.compress import Distillation, PruningError, inner_widths, kd_loss, prune_to_macs
from resnetkit.config import TrainConfig
from resnetkit.data.cifar import load_cifar
from resnetkit.engine.runner import run_training
from resnetkit.models import create_model
from resnetkit.models.complexity import count_macs

import procs
from conftest import REPO, require_module, shared_data

TINY = ["--no-progress", "--batch-size", "32", "--train-subset", "128", "--test-subset", "256", "--threads", "2"]


@pytest.fixture(autouse=True)
def _needs_torch_pruning() -> None:
    require_module("torch_pruning")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("name", "target"), [("resnet20", 0.5), ("resnet56", 0.45), ("resnet50", 0.3)])
def test_pruning_hits_the_macs_target_within_one_step(name: str, target: float) -> None:
    model = create_model(name, num_classes=10).eval()
    size = (3, 32, 32) if name != "resnet50" else (3, 64, 64)
    result = prune_to_macs(model, target, "l1", size, round_to=1)
    measured = count_macs(result.model, size) / count_macs(model, size)
    # at or under the target, by at most one pruning step (1% of every block's inner channels, ~1% of the MACs)
    assert target - 0.02 <= measured <= target
    assert result.macs_ratio == pytest.approx(measured)
    outer = [(k, v.shape) for k, v in model.state_dict().items() if not _inner_key(k)]
    assert outer == [(k, v.shape) for k, v in result.model.state_dict().items() if not _inner_key(k)]
    assert result.model(torch.randn(2, *size)).shape == (2, 10)


def _inner_key(key: str) -> bool:
    """Parameters that pruning may narrow: every block's convolutions and norms except the shortcut's."""
    return key.startswith("layer") and "downsample" not in key


def test_l1_pruning_keeps_the_filters_with_the_largest_l1_norms() -> None:
    model = create_model("resnet20", weights="resnet20.rk_cifar10").eval()
    pruned = prune_to_macs(model, 0.5, "l1").model
    for old, new in ((model.layer1[0], pruned.layer1[0]), (model.layer3[2], pruned.layer3[2])):
        norms = old.conv1.weight.abs().sum((1, 2, 3))
        kept = sorted(norms.argsort(descending=True)[: new.conv1.out_channels].tolist())
        assert torch.equal(new.conv1.weight, old.conv1.weight[kept])
        assert torch.equal(new.bn1.running_var, old.bn1.running_var[kept])
        assert torch.equal(new.conv2.weight, old.conv2.weight[:, kept])  # the next conv loses the same inputs


@pytest.mark.parametrize(("name", "target", "step"), [("resnet56", 0.5, 8), ("resnet50", 0.4, 16)])
def test_round_to_keeps_every_inner_width_a_multiple_and_meets_the_target(name: str, target: float, step: int) -> None:
    """--round-to N: every kept inner width a multiple of N (the widths int8 and fp32 kernels favour), the MACs
    at or under the target by at most one block's N channels; without it, ResNet-56 keeps odd widths such as 31."""
    model = create_model(name, num_classes=10).eval()
    size = (3, 32, 32) if name == "resnet56" else (3, 64, 64)
    rounded = prune_to_macs(model, target, "l1", size, round_to=step)
    widths = [w for stage in inner_widths(rounded.model) for block in stage for w in block]
    assert all(w % step == 0 and w > 0 for w in widths), widths
    assert target - 0.03 <= rounded.macs_ratio <= target and rounded.to_dict()["round_to"] == step
    assert rounded.model(torch.randn(2, *size)).shape == (2, 10)
    if name == "resnet56":
        free = prune_to_macs(model, target, "l1", size, round_to=1).model
        free = [w for stage in inner_widths(free) for b in stage for w in b]
        assert any(w % step for w in free)  # what rounding changes
    with pytest.raises(PruningError, match="--round-to must be a whole number"):
        prune_to_macs(model, target, "l1", size, round_to=0)


def test_pruned_widths_describe_the_model() -> None:
    model = create_model("resnet20", num_classes=10)
    pruned = prune_to_macs(model, 0.6, "bn").model
    widths = inner_widths(pruned)
    assert pruned.model_kwargs["inner_widths"] == widths
    assert [len(stage) for stage in widths] == [3, 3, 3] and max(w[0] for w in widths[0]) < 16
    rebuilt = create_model("resnet20", **pruned.model_kwargs)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)  # the kwargs alone rebuild the pruned shapes


@pytest.mark.parametrize(
    ("target", "method", "message"),
    [(0.0, "l1", "between 0 and 1"), (1.0, "l1", "between 0 and 1"), (0.5, "magic", "unknown pruning method")],
)
def test_bad_pruning_requests_are_one_line_errors(target: float, method: str, message: str) -> None:
    with pytest.raises(PruningError, match=message):
        prune_to_macs(create_model("resnet20"), target, method)
    with pytest.raises(PruningError, match="grouped convolutions"):
        prune_to_macs(create_model("resnext50_32x4d"), 0.5, "l1", (3, 32, 32))


def test_kd_loss_is_the_softened_kl_divergence_times_t_squared() -> None:
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    t = 2.0
    p = [math.exp(0 / t) / (math.exp(0 / t) + math.exp(1 / t)), math.exp(1 / t) / (math.exp(0 / t) + math.exp(1 / t))]
    q = [math.exp(2 / t) / (math.exp(2 / t) + 1), 1 / (math.exp(2 / t) + 1)]
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert float(kd_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-7)


def _tiny_cfg(out: Path, **changes) -> TrainConfig:
    base = dict(
        model="resnet20",
        data="sample",
        epochs=1,
        max_steps=3,
        batch_size=16,
        train_subset=64,
        test_subset=32,
        amp=False,
        progress=False,
        threads=1,
        seed=5,
        out=str(out),
    )
    return TrainConfig(**{**base, **changes})


def test_distillation_with_t1_and_weight0_equals_plain_training_bit_for_bit(tmp_path: Path) -> None:
    run_training(_tiny_cfg(tmp_path / "teacher", seed=1, max_steps=2))
    teacher = str(tmp_path / "teacher")
    run_training(_tiny_cfg(tmp_path / "plain", mixup=0.2))
    run_training(_tiny_cfg(tmp_path / "kd0", mixup=0.2, teacher=teacher, kd_temperature=1.0, kd_weight=0.0))
    run_training(_tiny_cfg(tmp_path / "kd", mixup=0.2, teacher=teacher, kd_temperature=4.0, kd_weight=0.9))
    plain, kd0, kd = (_weights(tmp_path / d) for d in ("plain", "kd0", "kd"))
    assert all(torch.equal(plain[k], kd0[k]) for k in plain)
    assert not all(torch.equal(plain[k], kd[k]) for k in plain)  # the teacher does change training when it counts


def test_the_distillation_recipe_differs_from_resnet20_alone_only_by_its_teacher() -> None:
    from resnetkit.config import load_yaml

    kd, alone = load_yaml("cifar10_resnet20_kd"), load_yaml("cifar10_bf16_cpu")
    assert {k: v for k, v in kd.items() if k not in ("teacher", "kd_temperature", "kd_weight")} == alone
    assert kd["teacher"] == "resnet56.rk_cifar10"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_distillation_teacher_steers_the_student() -> None:
    """With weight 1 the student's gradient is the soft-target gradient alone: (softmax(s/T) - softmax(t/T)) * T / N."""
    teacher = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    d = Distillation(teacher, temperature=2.0, weight=1.0)
    s_logits = student(x)
    d.combine(torch.zeros(()), s_logits, x).backward()
    with torch.no_grad():
        grad_logits = (torch.softmax(student(x) / 2, 1) - torch.softmax(teacher(x) / 2, 1)) * 2 / 5
        expected = grad_logits.T @ x
    torch.testing.assert_close(student.weight.grad, expected, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_prune_finetune_reload_in_a_fresh_process_and_export(tmp_path: Path, capsys) -> None:
    data = shared_data("cifar-10-batches-bin")
    run = tmp_path / "pruned"
    code, out, err = cli(
        capsys,
        "prune",
        "--checkpoint",
        "resnet20.rk_cifar10",
        "--target-macs",
        "0.5",
        "--method",
        "l1",
        "--data",
        "cifar10",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--out",
        str(run),
        *TINY,
    )
    assert code == 0, err
    assert "% of its MACs" in out and "completed after 4 steps" in out
    record = json.loads((run / "prune.json").read_text())
    assert 0.48 <= record["macs_ratio"] <= 0.5 and record["params_after"] < record["params_before"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model"]["layer1.0.conv1.weight"].shape[0] < 16
    assert ckpt["model_kwargs"]["inner_widths"] == record["inner_widths"]
    # a fresh process rebuilds the pruned network from the checkpoint alone and evaluates it
    args = ["eval", "--checkpoint", str(run), "--data", "cifar10", "--data-dir", str(data), "--json"]
    proc = procs.resnetkit("-q", *args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # pruning half the MACs at once leaves ~10% (chance) before fine-tuning; 4 steps on 128 images start the recovery
    assert result["n"] == 10_000 and result["top1"] > 0.12
    _exports_like_torch(capsys, run, tmp_path / "pruned.onnx")
    # predict and explain rebuild it too, with no extra flags
    image = tmp_path / "cifar0.png"
    Image.fromarray(
        np.asarray(load_cifar(str(data), "cifar10", "test", progress=False).images[0].permute(1, 2, 0))
    ).save(image)
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run), "--json", str(image))
    assert code == 0 and len(json.loads(out)[0]["top"]) == 3, err  # predict shows the top 3 by default
    code, out, err = cli(
        capsys, "explain", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "cam"), "--json"
    )
    assert code == 0 and Image.open(json.loads(out)[0]["out"]).size[0] > 0, err


def _exports_like_torch(capsys, run: Path, onnx_file: Path) -> None:
    from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint

    code, _, err = cli(capsys, "export", "--checkpoint", str(run), "--format", "onnx", "--out", str(onnx_file))
    assert code == 0, err
    ort = require_module("onnxruntime")
    x = torch.randn(4, 3, 32, 32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model_from_checkpoint(load_checkpoint(run)).eval()(x).numpy()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--checkpoint", "resnet20.rk_cifar10", "--target-macs", "0"], "between 0 and 1"),
        (["prune", "--checkpoint", "resnet20.rk_cifar10", "--target-macs", "1.5"], "between 0 and 1"),
        (["distill"], "distill needs --teacher"),
        (
            ["distill", "--teacher", "resnet20.rk_cifar10", "--data", "folder", "--data-dir", "{folder}"],
            "predicts 10 classes",
        ),
        (["distill", "--config", "{recipe}", "--data-dir", "{folder}"], "predicts 10 classes"),  # recipe's teacher
        (["distill", "--teacher", "{notes}"], "cannot read checkpoint"),
        (["distill", "--teacher", "{weights}"], "not a resnetkit checkpoint"),  # weights alone name no architecture
        (["distill", "--teacher", "{missing}"], "teacher not found"),
    ],
)
def test_bad_compression_input_is_one_line_and_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("not a model")
    weights = tmp_path / "weights.pt"
    torch.save(create_model("resnet20").state_dict(), weights)
    folder = _two_class_folder(tmp_path / "images")
    recipe = tmp_path / "kd.yaml"
    recipe.write_text("model: resnet20\ndata: folder\nteacher: resnet20.rk_cifar10\nkd_temperature: 2.0\n")
    args = [
        a.format(notes=notes, missing=tmp_path / "nothing.pt", folder=folder, recipe=recipe, weights=weights)
        for a in args
    ]
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "run"), *TINY)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _two_class_folder(root: Path) -> Path:
    """A tiny image folder whose classes (cat, dog) are not CIFAR-10's ten."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root
