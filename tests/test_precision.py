"""Mixed precision (issue 13): which autocast dtype a run uses, and fp16's loss scaler saved, restored and exact
on resume. fp16 autocast and torch.amp.GradScaler both run on the CPU, so the scaler is tested for real here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetkit.cli.main import main
from resnetkit.config import ConfigError, TrainConfig
from resnetkit.engine import device, runner
from resnetkit.engine.device import autocast_dtype, make_grad_scaler
from resnetkit.export.int8 import has_vnni

import faults
import procs
from conftest import require_program

RUN = ["-q", "train", "--no-progress", "--batch-size", "32", "--train-subset", "128", "--threads", "2", "--epochs", "2"]
# 4 steps an epoch; fp16 autocast is slow on a CPU: a narrow ResNet-20, and each epoch scores 64 images
RUN += ["--test-subset", "64", "--set", "model_kwargs={widths: [8, 16, 32]}"]
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
    a, stopped, b = faults.straight_and_resumed([*RUN, *FP16], tmp_path, monkeypatch)
    assert stopped["step"] == 3 and stopped["scaler"]["_growth_tracker"] == 3
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


# --- the default precision (issue 15): bf16 autocast on a CPU where it measured faster -----------------------


def _measured(home: Path, speedup: float) -> None:
    """This machine's cached bf16 measurement, as `bf16_speedup` keeps it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / device.PRECISION_CACHE).write_text(json.dumps({device.bf16_cache_key(): speedup}))


def _precision(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["precision"]


@pytest.mark.parametrize(("speedup", "bf16"), [(1.9, True), (1.1, False)])
def test_the_default_follows_the_measured_speedup(tmp_path: Path, monkeypatch, speedup: float, bf16: bool) -> None:
    monkeypatch.setenv("RESNETKIT_HOME", str(tmp_path / "home"))
    _measured(tmp_path / "home", speedup)
    assert main([*RUN, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    assert _ckpt(tmp_path / "run")["config"]["amp"] is bf16
    assert _precision(tmp_path / "run").startswith("bf16 autocast" if bf16 else "fp32")
    assert f"{speedup:.2f}x" in _precision(tmp_path / "run")


def test_the_flags_overrule_the_measurement(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESNETKIT_HOME", str(tmp_path / "home"))
    _measured(tmp_path / "home", 1.9)
    assert main([*RUN, "--max-steps", "1", "--no-amp", "--out", str(tmp_path / "fp32")]) == 0
    assert _ckpt(tmp_path / "fp32")["config"]["amp"] is False and _precision(tmp_path / "fp32").startswith("fp32")
    _measured(tmp_path / "home", 1.1)
    assert main([*RUN, "--max-steps", "1", "--amp", "--out", str(tmp_path / "bf16")]) == 0
    assert _ckpt(tmp_path / "bf16")["config"]["amp"] is True


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path: Path, monkeypatch) -> None:
    """The CPU (and so the measurement) may differ when a run continues in a later session: the run's own
    precision wins, or its resumed half would compute differently from its first half."""
    monkeypatch.setenv("RESNETKIT_HOME", str(tmp_path / "home"))
    _measured(tmp_path / "home", 1.9)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", faults.with_callbacks([faults.sigint_at(2)]))
        assert main([*RUN, "--out", str(run)]) == 130
    _measured(tmp_path / "home", 0.5)
    assert main(["-q", "train", "--resume", str(run), "--no-progress"]) == 0
    assert _ckpt(run)["step"] == 8 and _ckpt(run)["config"]["amp"] is True


def test_the_measurement_is_kept_and_leaves_the_run_alone(tmp_path: Path, monkeypatch) -> None:
    """Measured once (a second call reads the cache), a real ratio, and neither the seeded random state nor the
    thread count of the run changes."""
    monkeypatch.setenv("RESNETKIT_HOME", str(tmp_path / "home"))
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    speedup = device.bf16_speedup()
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert 0.05 < speedup < 50
    kept = json.loads((tmp_path / "home" / device.PRECISION_CACHE).read_text())
    assert kept == {device.bf16_cache_key(): round(speedup, 3)}

    def measure_again(*_a, **_k):
        raise AssertionError("measured twice")

    monkeypatch.setattr(device, "measure_bf16_speedup", measure_again)
    assert device.bf16_speedup() == round(speedup, 3)
    kept_speedup = round(speedup, 3)  # what the run decides with (and says): the cached, rounded ratio
    assert device.default_amp(torch.device("cpu")) == (
        kept_speedup >= device.BF16_MIN_SPEEDUP,
        f"{'bf16 autocast' if kept_speedup >= 1.25 else 'fp32'}: a bf16 training step measured {kept_speedup:.2f}x "
        "the fp32 one on this CPU",
    )


def test_gpus_and_float64_runs_stay_unmeasured_and_without_autocast(monkeypatch) -> None:
    def no_measuring(*_a, **_k):
        raise AssertionError("measured")

    monkeypatch.setattr(device, "measure_bf16_speedup", no_measuring)
    assert device.default_amp(torch.device("cuda"))[0] is False
    assert device.default_amp(torch.device("cpu"), "float64")[0] is False


@pytest.mark.parametrize("value", ["yes", 1])
def test_amp_is_true_false_or_null(value) -> None:
    with pytest.raises(ConfigError, match="amp in config must be true or false"):
        TrainConfig.from_dict({"amp": value})
    assert TrainConfig.from_dict({"amp": None}).amp is None


def test_the_cpu_is_named_and_its_flags_read_as_lscpu_shows_them() -> None:
    """The bf16 cache key starts with the CPU's model name and lists exactly the bf16/AMX flags lscpu shows; the
    int8 export's VNNI check agrees with lscpu's flags."""
    lscpu = [require_program("lscpu")]
    text = procs.run(lscpu, timeout=60, env={"LC_ALL": "C"}).stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    flags = set(fields.get("Flags", "").split())
    signature = device.cpu_signature()
    assert signature.startswith(fields["Model name"])
    for flag in ("avx512_bf16", "amx_bf16", "avx512f"):
        assert (f" {flag}" in signature) == (flag in flags)
    assert has_vnni() == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags or not flags)
