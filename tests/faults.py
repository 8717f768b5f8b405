"""Fault injection for tests, through the training loop's step callbacks (never read by the library itself).

`python tests/faults.py train ...` runs the real `resnetkit` CLI with these faults, configured by environment
variables of this script: FAULT_SIGINT_AT=N sends this process a real SIGINT after step N (the Ctrl-C handler
runs as for a user's Ctrl-C); FAULT_KILL_AT=N with FAULT_KILL_RANK=R (default 1) kills rank R by SIGKILL after
step N of torchrun's first attempt, as a lost worker would die; FAULT_HANG_AT=N makes the step after N never end
(a stuck read or collective: what users press Ctrl-C twice for).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from resnetkit.engine.trainer import RunResult, StepCallback, StepInfo


def sigint_at(step: int) -> StepCallback:
    """A real Ctrl-C (SIGINT to this process) right after optimisation step `step`."""

    def callback(info: StepInfo) -> None:
        if info.step == step:
            signal.raise_signal(signal.SIGINT)

    return callback


def kill_at(step: int, rank: int = 1) -> StepCallback:
    """SIGKILL of process `rank` after step `step`, in torchrun's first attempt only (the restart survives)."""

    def callback(info: StepInfo) -> None:
        if info.step == step and info.rank == rank and info.restart_count == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def hang_at(step: int) -> StepCallback:
    """The process hangs right after optimisation step `step` (a Ctrl-C handler still runs: signals interrupt sleep)."""

    def callback(info: StepInfo) -> None:
        if info.step == step:
            while True:
                time.sleep(0.1)

    return callback


def callbacks_from_env() -> list[StepCallback]:
    callbacks = []
    if os.environ.get("FAULT_SIGINT_AT"):
        callbacks.append(sigint_at(int(os.environ["FAULT_SIGINT_AT"])))
    if os.environ.get("FAULT_KILL_AT"):
        callbacks.append(kill_at(int(os.environ["FAULT_KILL_AT"]), int(os.environ.get("FAULT_KILL_RANK", "1"))))
    if os.environ.get("FAULT_HANG_AT"):
        callbacks.append(hang_at(int(os.environ["FAULT_HANG_AT"])))
    return callbacks


def with_callbacks(callbacks: list[StepCallback]) -> Callable[..., RunResult]:
    """engine.runner.run_training with `callbacks` added: what `resnetkit train` calls, faults injected."""
    from resnetkit.engine import runner

    return functools.partial(runner.run_training, callbacks=callbacks)


def straight_and_resumed(run: list[str], folder: Path, monkeypatch, stop_at: int = 3) -> tuple[dict, dict, dict]:
    """`resnetkit RUN` (in this process) twice: once straight through, once stopped by a real SIGINT after step
    `stop_at` (exit 130) and resumed. The last checkpoints of the straight run, of the stopped one before it was
    resumed, and of the resumed one."""
    import torch

    from resnetkit.cli.main import main
    from resnetkit.engine import runner

    straight, split = folder / "straight", folder / "split"
    assert main([*run, "--out", str(straight)]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_training", with_callbacks([sigint_at(stop_at)]))
        assert main([*run, "--out", str(split)]) == 130
    stopped = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert main(["-q", "train", "--resume", str(split), "--no-progress"]) == 0
    last = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (straight, split))
    return next(last), stopped, next(last)


if __name__ == "__main__":
    from resnetkit.cli.main import main
    from resnetkit.engine import runner

    runner.run_training = with_callbacks(callbacks_from_env())
    sys.exit(main(sys.argv[1:]))
