"""Mixed precision (issue 13): which autocast dtype a run uses, and fp16's loss scaler saved, restored and exact
on resume. fp16 autocast and torch.amp.GradScaler both run on the CPU, so the scaler is tested for real here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnetkit.cli.main import main
from resnetkit.engine import runner
from resnetkit.engine.device import autocast_dtype, make_grad_scaler

import faults

RUN = ["-q", "train", "--no-progress", "--batch-size", "32", "--train-subset", "128", "--threads", "2", "--epochs", "2"]
FP16 = ["--amp", "--amp-dtype", "float16"]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize(
    ("amp", "requested", "device", "bf16", "expected"),
    [
        (False, "auto", "cuda", True, None),
        (True, "auto", "cpu", False, torch.bfloat16),  # CPU autocast is bf16 (fp16 only when asked for)
        (True, "auto", "cuda", True, torch.bfloat16),  # Ampere and later
        (True, "auto", "cuda", False, torch.float16),  # V100, T4: fp16, with the loss scaler
        (True, "float16", "cpu", False, torch.float16),
        (True, "bfloat16", "cuda", False, torch.bfloat16),
    ],
)
def test_autocast_dtype_rule(amp: bool, requested: str, device: str, bf16: bool, expected: torch.dtype | None) -> None:
    assert autocast_dtype(amp, requested, device, bf16) is expected


def test_the_loss_scaler_is_enabled_for_fp16_only() -> None:
    cpu = torch.device("cpu")
    assert make_grad_scaler(torch.float16, cpu).is_enabled()
    assert not make_grad_scaler(torch.bfloat16, cpu).is_enabled() and not make_grad_scaler(None, cpu).is_enabled()


def test_fp16_run_scales_the_loss_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    """Stopped by a real SIGINT after step 3 and resumed, an fp16 run ends with the weights and loss-scaler state
    of the run that was never stopped; every step went through the scaler (its growth tracker counts them)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*RUN, *FP16, "--out", str(straight)]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(3)]))
        assert main([*RUN, *FP16, "--out", str(split)]) == 130
    stopped = _ckpt(split)
    assert stopped["step"] == 3 and stopped["scaler"]["_growth_tracker"] == 3
    assert main(["-q", "train", "--resume", str(split), "--no-progress"]) == 0
    a, b = _ckpt(straight), _ckpt(split)
    assert a["step"] == b["step"] == 8
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] == 2.0**16 and a["scaler"]["_growth_tracker"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_restores_the_loss_scale(tmp_path: Path, monkeypatch) -> None:
    """A run whose scale had backed off (as after fp16 overflows) continues with that scale, not the initial one."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(2)]))
        assert main([*RUN, *FP16, "--out", str(run)]) == 130
    ckpt = _ckpt(run)
    ckpt["scaler"]["scale"] = 1024.0
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    assert main(["-q", "train", "--resume", str(run), "--no-progress"]) == 0
    assert _ckpt(run)["scaler"]["scale"] == 1024.0 and _ckpt(run)["scaler"]["_growth_tracker"] == 8


def test_bf16_and_fp32_runs_have_no_loss_scaler(tmp_path: Path) -> None:
    assert main([*RUN, "--max-steps", "1", "--amp", "--out", str(tmp_path / "bf16")]) == 0
    assert _ckpt(tmp_path / "bf16")["scaler"] == {} and _ckpt(tmp_path / "bf16")["config"]["amp"] is True
