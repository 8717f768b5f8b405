"""CLI flags that no other test passes (issue 28), each through the real CLI on real files, each checked for its
effect: train's --label-smoothing and --weight-decay (the first step recomputed by hand from the images and the
checkpoints), finetune's --stages, report's --mistakes, --image-column and --group-column, --version,
`bench train --amp`, and the installed `resnetkit` console script."""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode

import resnetkit.data
import resnetkit.weights
from resnetkit.cli.main import main
from resnetkit.constants import VERSION
from resnetkit.models import create_model

import procs
from conftest import pin_precision

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = Path(resnetkit.data.__file__).parent / "sample"  # real CIFAR-10 records: 2000 train, 500 test (50 a class)
SHIPPED_RESNET20 = Path(resnetkit.weights.__file__).parent / "shipped" / "resnet20_rk_cifar10.safetensors"
LR = 0.1
SUBSET = 64
RUN = (
    f"--model resnet20 --data sample --max-steps 1 --train-subset {SUBSET} --test-subset 32 --batch-size {SUBSET} "
    "--threads 1 --no-progress --no-amp"
).split()
# One SGD step at a constant lr on one batch that holds the whole 64-image subset, un-augmented (augment none:
# normalisation only), so the step's loss and update can be recomputed by hand from the images and checkpoints.
STEP = [*RUN, "--seed", "0", "--schedule", "constant", "--lr", str(LR), "--set", "augment=none"]
VEHICLES = (0, 1, 8, 9)  # CIFAR-10's airplane, automobile, ship, truck; labels 2..7 are animals


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test of the module (and the module's shared run) with its own cache folder, offline."""
    with pytest.MonkeyPatch.context() as mp:
        path = pin_precision(tmp_path_factory.mktemp("home"))
        mp.setenv("RESNETKIT_HOME", str(path))
        mp.setenv("RESNETKIT_OFFLINE", "1")
        yield path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def report(capsys: pytest.CaptureFixture[str], run: Path, out: Path, *flags: str) -> tuple[int, str, str]:
    """`resnetkit report` of `run`'s checkpoint on the sample's 500 test images, into `out`."""
    return cli(
        capsys, "report", "--checkpoint", str(run), "--data", "sample", "--no-compile", "--out", str(out), *flags
    )


def train_args(out: Path, *, weight_decay: float = 0.0, label_smoothing: float = 0.0) -> list[str]:
    flags = f"--weight-decay {weight_decay} --label-smoothing {label_smoothing}".split()
    return ["train", *STEP, *flags, "--out", str(out)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step without weight decay or label smoothing: the reference of both flags' tests, and the (barely
    trained, so mostly wrong) checkpoint the report flags are tested on."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert main(["-q", *train_args(run)]) == 0
    return run


def last_row(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def config(run: Path) -> dict[str, Any]:
    return yaml.safe_load((run / "config.yaml").read_text())


def checkpoint(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def sample_records(split: str) -> np.ndarray:
    """The embedded sample's CIFAR-10 binary records (a label byte, then 3072 pixel bytes), read here."""
    with gzip.open(SAMPLE / f"cifar10_sample_{split}.bin.gz") as f:
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(-1, 3073)


def normalised(records: np.ndarray, preprocessing: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images normalised with the checkpoint's mean and std, labels)."""
    x = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)) / 255
    mean, std = (torch.tensor(preprocessing[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std, torch.from_numpy(records[:, 0].astype(np.int64))


def param_names() -> list[str]:
    """ResNet-20's parameters in model order: the order of the optimizer's single SGD group (indices 0..58)."""
    return [name for name, _ in create_model("resnet20", num_classes=10).named_parameters()]


def initial_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights before a run's only SGD step, from its checkpoint: the first step sets the momentum buffer to
    the step's direction d (torch.optim.SGD) and the weights to w0 - lr * d, so w0 = w1 + lr * d."""
    buffers = ckpt["optimizer"]["state"]
    return {n: ckpt["model"][n] + LR * buffers[i]["momentum_buffer"] for i, n in enumerate(param_names())}


def eager_model(ckpt: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The checkpoint's architecture in plain eager PyTorch, with its weights (some replaced by `weights`)."""
    model = create_model(ckpt["model_name"], num_classes=len(ckpt["classes"]))
    model.load_state_dict({**ckpt["model"], **(weights or {})})
    return model


def first_step_logits(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the run's one training step, recomputed: the initial weights in training mode (BatchNorm on
    the batch's statistics) on the 64 training images. The subset is the first 64 of the seeded permutation of
    the 2000 sample images (data.splits.seeded_order, seed 0); their order within the batch changes neither the
    mean loss nor BatchNorm's batch statistics."""
    ckpt = checkpoint(run)
    model = eager_model(ckpt, initial_weights(ckpt)).train()
    take = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:SUBSET].numpy()
    x, y = normalised(sample_records("train")[take], ckpt["preprocessing"])
    with torch.no_grad():
        return model(x), y


def test_label_smoothing_is_the_loss_of_the_step_and_is_recorded(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, *train_args(tmp_path / "run", label_smoothing=0.2))
    assert code == 0, err
    smoothed = tmp_path / "run"
    assert config(smoothed)["label_smoothing"] == 0.2 and config(base_run)["label_smoothing"] == 0.0
    logits, labels = first_step_logits(base_run)
    plain, smooth = (float(F.cross_entropy(logits, labels, label_smoothing=e)) for e in (0.0, 0.2))
    assert abs(smooth - plain) > 2e-3  # 100x the tolerance below: the comparisons tell the two losses apart
    # one step over the whole subset: the epoch's train_loss is that step's loss
    assert last_row(base_run)["train_loss"] == pytest.approx(plain, abs=2e-5)
    assert last_row(smoothed)["train_loss"] == pytest.approx(smooth, abs=2e-5)


def test_weight_decay_is_the_sgd_decay_term_and_is_recorded(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wd = 0.5
    code, _, err = cli(capsys, *train_args(tmp_path / "run", weight_decay=wd))
    assert code == 0, err
    decayed = tmp_path / "run"
    assert config(decayed)["weight_decay"] == wd
    plain, ckpt = checkpoint(base_run), checkpoint(decayed)
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [wd]
    w0 = initial_weights(plain)  # the same in both runs (same seed), as is the first step's gradient g
    for i, name in enumerate(param_names()):
        # SGD's first step with decay: d = g + wd * w0, w1 = w0 - lr * d; without it: d = g, w1 = w0 - lr * g
        step = ckpt["model"][name] - plain["model"][name]
        torch.testing.assert_close(step, -LR * wd * w0[name], rtol=1e-4, atol=1e-6, msg=name)
        d, d_plain = (c["optimizer"]["state"][i]["momentum_buffer"] for c in (ckpt, plain))
        torch.testing.assert_close(d - d_plain, wd * w0[name], rtol=1e-4, atol=1e-5, msg=name)


def test_finetune_stages_trains_the_last_n_stages_and_nothing_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    flags = "--weights resnet20.rk_cifar10 --strategy last --stages 2".split()
    code, _, err = cli(capsys, "finetune", *flags, *RUN, "--out", str(run))
    assert code == 0, err
    assert config(run)["finetune"] == "last" and config(run)["trainable_stages"] == 2
    pretrained, tuned = load_file(SHIPPED_RESNET20), checkpoint(run)["model"]
    assert set(pretrained) == set(tuned)
    # ResNet-20's stages: the stem (conv1, bn1), layer1, layer2, layer3. The last 2 and the head train (weights,
    # and BatchNorm statistics); the stem and layer1 stay exactly as pretrained, BatchNorm statistics included.
    frozen = sorted(k for k in tuned if k.split(".")[0] in ("conv1", "bn1", "layer1"))
    trained = sorted(set(tuned) - set(frozen))
    assert {k.split(".")[0] for k in trained} == {"layer2", "layer3", "fc"}
    assert [k for k in frozen if not torch.equal(tuned[k], pretrained[k])] == []
    assert [k for k in trained if torch.equal(tuned[k], pretrained[k])] == []


def test_report_mistakes_lists_that_many_of_the_most_confident_mistakes(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code, _, err = report(capsys, base_run, out, "--format", "markdown", "--mistakes", "5")
    assert code == 0, err
    rows = json.loads((out / "report.json").read_text())["mistakes"]
    # recomputed here: the checkpoint in eager PyTorch on the 500 test images of the sample, read from the file
    ckpt = checkpoint(base_run)
    x, labels = normalised(sample_records("test"), ckpt["preprocessing"])
    with torch.no_grad():
        probs = eager_model(ckpt).eval()(x).double().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    assert len(wrong) > 5  # a barely trained model: far more mistakes than asked for
    expected = wrong[confidence[wrong].argsort(descending=True)][:5].tolist()
    names = [(ckpt["classes"][int(labels[i])], ckpt["classes"][int(predicted[i])]) for i in expected]
    assert [int(r["id"]) for r in rows] == expected
    assert [(r["true"], r["pred"]) for r in rows] == names
    assert [r["prob"] for r in rows] == pytest.approx(confidence[expected].tolist(), abs=1e-4)
    # written: 5 rows in the page's table (after its header and rule) and the figure of their images
    table = (out / "report.md").read_text().split("## Most confident mistakes")[1].split("\n\n")[2].splitlines()
    assert [line.split(" | ")[0].removeprefix("| ") for line in table[2:]] == [str(i) for i in expected]
    assert (out / "mistakes.png").is_file()


def test_report_groups_read_the_named_image_and_group_columns(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = sample_records("test")[:, 0]
    groups = tmp_path / "groups.csv"
    with groups.open("w", newline="") as f:
        writer = csv.writer(f)
        # decoys under the default names: an "image" column that names no evaluated image, one "group" for all
        writer.writerow(["file_no", "kind", "image", "group"])
        for i, label in enumerate(labels):
            writer.writerow([i, "vehicle" if label in VEHICLES else "animal", f"decoy-{i}", "everyone"])
    columns = "--image-column file_no --group-column kind".split()
    code, out, err = report(capsys, base_run, tmp_path / "report", "--groups", str(groups), *columns, "--json")
    assert code == 0, err
    numbers = json.loads(out)
    assert numbers["n"] == 500 and numbers["groups"]["column"] == "kind"
    rows = {r["group"]: r for r in numbers["groups"]["rows"]}
    assert set(rows) == {"animal", "vehicle"}
    cm = numbers["confusion_matrix"]  # rows: true class
    animals = [c for c in range(10) if c not in VEHICLES]
    for name, members in (("vehicle", VEHICLES), ("animal", animals)):
        n = 50 * len(members)  # the sample holds 50 test images of each class
        assert rows[name]["n"] == n
        assert rows[name]["accuracy"] == pytest.approx(sum(cm[c][c] for c in members) / n)
    gap = abs(rows["vehicle"]["accuracy"] - rows["animal"]["accuracy"])
    assert numbers["groups"]["accuracy_gap"] == pytest.approx(gap)


def test_version_prints_the_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"resnetkit {VERSION}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


class LayerOutputDtypes(TorchFunctionMode):
    """Counts the dtype of every convolution's and linear layer's output (torch's own hook into its functions:
    what autocast actually computed, whatever the command says it did)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[tuple[str, torch.dtype], int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = {F.conv2d: "conv2d", F.linear: "linear"}.get(func)
        if name is not None:
            self.counts[name, out.dtype] = self.counts.get((name, out.dtype), 0) + 1
        return out


def test_bench_train_amp_trains_in_bf16_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    seen = LayerOutputDtypes()
    with seen:
        code, out, err = cli(
            capsys, *"bench train --amp --model resnet20 --steps 1 --batch-size 8 --threads 1 --no-compile".split()
        )
    assert code == 0, err
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "train" and result["extra"] == {"amp": True} and result["threads"] == 1
    assert "bf16 autocast" in lines[-2]
    # ResNet-20: 19 convolutions and one linear layer per forward (6n + 2 = 20 weighted layers, n = 3; option A
    # shortcuts have no weights). resnetkit's side ran every forward in bf16; the baseline stayed fp32.
    bf16_forwards = seen.counts.get(("linear", torch.bfloat16), 0)
    assert bf16_forwards >= 1 and seen.counts.get(("conv2d", torch.bfloat16)) == 19 * bf16_forwards
    assert seen.counts.get(("linear", torch.float32), 0) >= 1


def test_the_installed_console_script(tmp_path: Path) -> None:
    """The `resnetkit` entry point pip installed beside this Python (the subprocess is the point)."""
    exe = Path(sys.executable).parent / "resnetkit"
    assert exe.is_file()
    listed = procs.run([str(exe), "models", "resnet2*", "--json"], cwd=tmp_path)  # --version: in-process above
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    # the paper's ResNet-20 for CIFAR-10 has 0.27M parameters: 269,722 counted
    assert [(r["name"], r["params"], r["input_size"]) for r in rows] == [("resnet20", 269_722, [3, 32, 32])]
