"""Self-describing checkpoints (issue 13): every kwarg that built the model is kept, or the save is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from resnetkit.cli.main import main
from resnetkit.models import create_model


def test_non_scalar_model_kwargs_survive_a_checkpoint(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=3, widths=(8, 16, 24), drop_path_rate=0.1)
    save_checkpoint(tmp_path / "c.pt", model, classes=["a", "b", "c"])
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"))
    assert rebuilt.model_kwargs["widths"] == (8, 16, 24) and rebuilt.num_features == 24
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)


def test_a_model_the_checkpoint_cannot_describe_is_refused(tmp_path: Path) -> None:
    model = create_model("resnet20", norm_layer=nn.BatchNorm2d)  # a class: not plain data
    with pytest.raises(CheckpointError, match="norm_layer=.*not plain data"):
        save_checkpoint(tmp_path / "c.pt", model, classes=[str(i) for i in range(10)])
    assert not (tmp_path / "c.pt").exists() and not list(tmp_path.iterdir())


def test_widths_from_a_recipe_reach_eval(tmp_path: Path, capsys) -> None:
    """`--set model_kwargs={widths: [...]}` (a YAML list) trains, and eval rebuilds the same narrow model."""
    run = tmp_path / "run"
    args = ["-q", "train", "--max-steps", "1", "--no-progress", "--batch-size", "32", "--train-subset", "64"]
    assert main([*args, "--set", "model_kwargs={widths: [8, 16, 24]}", "--out", str(run)]) == 0
    assert load_checkpoint(run)["model_kwargs"]["widths"] == [8, 16, 24]
    capsys.readouterr()
    assert main(["-q", "eval", "--checkpoint", str(run), "--data", "sample", "--no-compile", "--json"]) == 0
    assert '"n": 500' in capsys.readouterr().out


def test_the_loop_reads_the_positions_of_checkpoints_written_before_the_one_loop() -> None:
    """Issue 29: checkpoints written by the two former loops still resume. A detection checkpoint of session 13 had
    no early-stopping count and called the epoch's steps "done"; an epoch-end one of before had no batch or partial."""
    from resnetkit.engine.trainer import TrainState

    detection = {"epoch": 1, "batch": 3, "step": 7, "history": [{"epoch": 1}], "best": {"epoch": 1, "val_map": 0.2}}
    detection["partial"] = {"loss": 2.5, "loss_classifier": 1.0, "done": 3, "seen": 12, "time": 4.0}
    state = TrainState.from_checkpoint(detection)
    assert (state.epoch, state.batch, state.step, state.stale) == (1, 3, 7, 0)
    assert state.partial == {"loss": 2.5, "loss_classifier": 1.0, "steps": 3, "seen": 12, "time": 4.0}
    older = TrainState.from_checkpoint({"epoch": 2, "step": 20, "history": [], "best": None})
    assert (older.batch, older.partial, older.stale) == (0, {}, 0)
