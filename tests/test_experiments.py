"""`resnetkit experiment degradation | gradflow` on tiny budgets: the files, their contents, reuse of finished
runs, the paper's recipe behind --full, and gradient-flow measurements that leave the model as it was."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from resnetkit.cli.main import main
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.data.factory import load_training_data
from resnetkit.experiments import Curve, degradation_configs, findings
from resnetkit.experiments.degradation import weighted_depth
from resnetkit.experiments.gradflow import run_gradflow, write_gradflow
from resnetkit.explain.gradflow import measure_flow, record_activations, units
from resnetkit.models import create_model
from resnetkit.transforms import DataConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_degradation_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys) -> None:
    args = [
        "experiment",
        "degradation",
        "--data",
        "sample",
        "--models",
        "plain20",
        "resnet20",
        "--epochs",
        "2",
        "--train-subset",
        "128",
        "--test-subset",
        "100",
        "--set",
        "warmup_epochs=1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert f"figure: {tmp_path / 'degradation.png'}   data: {tmp_path / 'degradation.csv'}" in out
    assert (tmp_path / "degradation.png").stat().st_size > 10_000
    rows = _rows(tmp_path / "degradation.csv")
    assert [(r["model"], r["plain"], r["depth"], r["epoch"]) for r in rows] == [
        (m, p, "20", e) for m, p in (("plain20", "1"), ("resnet20", "0")) for e in ("1", "2")
    ]
    for model in ("plain20", "resnet20"):  # ordinary runs: one recipe, the model aside
        history = [json.loads(line) for line in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
        assert {h["test_n"] for h in history} == {100}
        assert [float(r["train_error"]) for r in rows if r["model"] == model] == pytest.approx(
            [100 * (1 - h["train_top1"]) for h in history], abs=1e-3
        )
        assert [float(r["test_error"]) for r in rows if r["model"] == model] == pytest.approx(
            [100 * (1 - h["test_top1"]) for h in history], abs=1e-3
        )
    configs = [(tmp_path / m / "config.yaml").read_text().replace(m, "MODEL") for m in ("plain20", "resnet20")]
    assert configs[0] == configs[1] and "warmup_epochs: 1.0\n" in configs[0]
    before = (tmp_path / "plain20" / "checkpoints" / "last.pt").stat().st_mtime_ns
    code, again, err = cli(capsys, *args)  # finished runs are reused, not trained again
    assert code == 0, err
    assert (tmp_path / "plain20" / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert _rows(tmp_path / "degradation.csv") == rows
    code, _, err = cli(capsys, *[a if a != "2" else "3" for a in args])
    assert code == 2 and "holds a run with another recipe (epochs differ); choose another --out" in err


def test_degradation_recipes_and_bad_input(tmp_path: Path, capsys) -> None:
    cpu, full = (degradation_configs(out=tmp_path, full=f, data_dir="/data") for f in (False, True))
    assert [c.model for c in cpu] == ["plain20", "plain56", "resnet20", "resnet56"]
    assert {(c.lr, c.momentum, c.weight_decay, c.augment) for c in cpu + full} == {(0.1, 0.9, 1e-4, "cifar")}
    assert {(c.batch_size, c.warmup_epochs) for c in cpu} == {(64, 0.5)} and full[0].batch_size == 128
    assert cpu[0].train_subset == 40000 and cpu[0].test_subset == 2000 and cpu[0].epochs == 4
    assert cpu[0].out == str(tmp_path / "plain20")
    assert full[0].train_subset is None and full[0].max_steps == 64000 and full[0].schedule == "paper"
    assert full[0].test_subset is None
    # the precision is the training default (bf16 on a CPU where it measured faster), unless the caller says
    assert {c.amp for c in cpu + full} == {None}
    assert not degradation_configs(out=tmp_path, device="cpu", amp=False)[0].amp
    assert degradation_configs(out=tmp_path, train_subset=0)[0].train_subset is None
    with pytest.raises(ConfigError, match="at least two models"):
        degradation_configs(["resnet20"], out=tmp_path)
    code, _, err = cli(capsys, "experiment", "degradation", "--models", "plain20", "resnet21", "--out", str(tmp_path))
    assert code == 2 and "unknown model 'resnet21'" in err and err.count("\n") == 1
    assert degradation_configs(out=tmp_path, amp=True, test_subset=500)[3].amp is True
    for bad, message in (
        (["--set", "out=elsewhere"], "--set out: use --out instead"),
        (["--set", "warmup=1"], "unknown key 'warmup' in experiment; did you mean 'warmup_"),
        (["--set", "amp"], "--set expects KEY=VALUE, got 'amp'"),
    ):
        code, _, err = cli(capsys, "experiment", "degradation", *bad, "--out", str(tmp_path / "x"))
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_test_subset_is_one_draw_for_every_run_and_seed() -> None:
    pre = DataConfig((3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    full = load_training_data(TrainConfig(data="sample"), pre).test
    drawn = [load_training_data(TrainConfig(data="sample", test_subset=120, seed=s), pre).test for s in (0, 1)]
    assert len(drawn[0]) == 120 and torch.equal(drawn[0].images, drawn[1].images)
    assert torch.equal(drawn[0].labels, drawn[1].labels) and drawn[0].info["test_subset"] == 120
    matches = (drawn[0].images.flatten(1)[:, None] == full.images.flatten(1)[None]).all(-1)
    assert matches.any(1).all()  # images of the test set, each once, in the set's order
    assert (matches.float().argmax(1).diff() > 0).all()
    assert len(load_training_data(TrainConfig(data="sample", test_subset=0), pre).test) == len(full) == 500
    with pytest.raises(ConfigError, match="test_subset must be 0 \\(all images\\) or more, got -1"):
        TrainConfig(data="sample", test_subset=-1)


def test_findings_compare_the_shallow_and_the_deep_net_of_each_kind() -> None:
    def curve(model: str, plain: bool, depth: int, train: float, test: float) -> Curve:
        return Curve(model, plain, depth, [1, 2], [90.0, train], [90.0, test])

    result = findings(
        [
            curve("plain20", True, 20, 10, 12),
            curve("plain56", True, 56, 14, 15),
            curve("resnet20", False, 20, 9, 11),
            curve("resnet56", False, 56, 6, 9),
        ]
    )
    assert [(f["shallow"], f["deep"], f["deeper_trains_worse"]) for f in result] == [
        ("plain20", "plain56", True),
        ("resnet20", "resnet56", False),
    ]
    assert result[0]["train_error"] == (10, 14) and result[1]["test_error"] == (11, 9)


@pytest.mark.parametrize(
    ("name", "depth"), [("resnet20", 20), ("plain56", 56), ("resnet110", 110), ("resnet18", 18), ("resnet50", 50)]
)
def test_weighted_depth_is_the_papers_count(name: str, depth: int) -> None:
    with torch.device("meta"):
        assert weighted_depth(create_model(name)) == depth


def test_measuring_gradient_flow_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = create_model("plain20").eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flow = measure_flow(model, x, y)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert len(flow["layers"]) == 20 and flow["layers"][0] == "conv1" and flow["layers"][-1] == "fc"
    assert flow["units"] == ["conv1", "bn1", "relu"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert all(g > 0 for g in flow["grad_norms"]) and flow["act_std"][1] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(RuntimeError), record_activations(model):
        raise RuntimeError
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0 and len(units(model)) == 12


def test_gradflow_experiment_and_command(tmp_path: Path, capsys) -> None:
    snapshots = run_gradflow(["plain20", "resnet20"], record_at=(2, 0), batch_size=16, probe_size=16)
    assert [(s.model, s.plain, s.step) for s in snapshots] == [
        ("plain20", True, 0),
        ("plain20", True, 2),
        ("resnet20", False, 0),
        ("resnet20", False, 2),
    ]
    assert snapshots[0].grad_norms != snapshots[1].grad_norms  # the two training steps changed the weights
    csv_path, png = write_gradflow(snapshots, tmp_path)
    rows = _rows(csv_path)
    assert len(rows) == 4 * (20 + 20 + 12 + 12) and png.stat().st_size > 10_000
    assert {r["quantity"] for r in rows} == {"grad_norm", "weight_norm", "act_mean", "act_std"}
    code, out, err = cli(
        capsys,
        "experiment",
        "gradflow",
        "--models",
        "plain20",
        "resnet20",
        "--steps",
        "0,1",
        "--batch-size",
        "16",
        "--probe-size",
        "16",
        "--out",
        str(tmp_path / "cli"),
    )
    assert code == 0, err
    assert out.count("|grad| first layer") == 4 and (tmp_path / "cli" / "gradflow.png").is_file()
    code, _, err = cli(capsys, "experiment", "gradflow", "--steps", "0,x", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--steps expects comma-separated step numbers" in err
    code, _, err = cli(capsys, "experiment", "gradflow", "--models", "plain20", "plain1202", "--out", str(tmp_path))
    assert code == 2 and "unknown model 'plain1202'" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "experiment", "gradflow", "--probe-size", "0", "--out", str(tmp_path))
    assert code == 2 and "batch_size and probe_size must be positive" in err
