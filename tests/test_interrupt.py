"""Ctrl-C from outside the process: a real SIGINT sent to a running `resnetkit train` (engine/interrupt.py).

The first Ctrl-C finishes the step, saves last.pt and exits 130 with one line saying how to resume; the resumed run
ends with the weights of an uninterrupted one. A second Ctrl-C stops at once. (Several processes under torchrun:
tests/test_distributed.py.) Every process started here is reaped in a `finally` (procs) if it is still running;
the runs that are not interrupted run in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetkit.checkpoint import load_checkpoint
from resnetkit.cli.main import main

import faults
import procs
from conftest import REPO, wait_for_file

FAULTS = Path(faults.__file__)
RUN = ["--data", "sample", "--no-progress", "--batch-size", "32", "--threads", "1", "--test-subset", "100"]
RUN += ["--train-subset", "640", "--epochs", "3"]  # 20 steps an epoch, 60 in all
RUN += ["--set", "model_kwargs={widths: [8, 16, 32]}"]  # a narrow ResNet-20: the steps are what is tested
TOTAL_STEPS = 60
HANG_GUARD_S = 300  # only a hang meets these bounds: waits end when the awaited thing happens


def _env() -> dict[str, str]:
    """A PYTHONPATH set by the caller (a scratch copy of src) comes before the repository's src."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO / "src")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _start(tmp_path: Path, *cmd: str, **env: str) -> subprocess.Popen:
    """Start `cmd` (stdout, stderr into files of tmp_path, never a pipe that could fill up while nobody reads it)."""
    out, err = (open(tmp_path / name, "w") for name in ("stdout.txt", "stderr.txt"))
    with out, err:
        return procs.start(list(cmd), stdout=out, stderr=err, env={**_env(), **env}, cwd=REPO)


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


def _train(*args: str) -> int:
    """`resnetkit train ARGS` in this process (the runs the test does not interrupt need no process of their own)."""
    threads = torch.get_num_threads()
    try:
        return main(["-q", "train", *args])
    finally:
        torch.set_num_threads(threads)


def _metrics(run: Path) -> list[dict]:
    drop = ("train_time_s", "train_images_per_s", "data_wait_share")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


@pytest.mark.slow
def test_ctrl_c_from_outside_stops_after_the_step_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(*RUN, "--checkpoint-every", "5", "--out", str(straight)) == 0
    proc = _start(
        tmp_path, sys.executable, "-m", "resnetkit", "-q", "train", *RUN, "--checkpoint-every", "5", "--out", str(split)
    )
    try:
        wait_for_file(split / "checkpoints" / "last.pt", proc, tmp_path / "stderr.txt", HANG_GUARD_S)  # step 5 is done
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_GUARD_S) == 130, _stderr(tmp_path)[-2000:]
    finally:
        procs.reap(proc)
    lines = _stderr(tmp_path).strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    last = split / "checkpoints" / "last.pt"
    message = re.fullmatch(
        rf"resnetkit: interrupted at epoch (\d), step (\d+); checkpoint {re.escape(str(last))} is intact: "
        rf"continue with `resnetkit train --resume {re.escape(str(split))}`",
        lines[0],
    )
    assert message, lines[0]
    epoch, step = int(message[1]), int(message[2])
    assert 5 <= step < TOTAL_STEPS and load_checkpoint(last)["step"] == step and epoch == (step - 1) // 20 + 1
    assert _train("--resume", str(split), "--no-progress") == 0
    a, b = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (straight, split))
    assert a["step"] == b["step"] == TOTAL_STEPS
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    assert _metrics(straight) == _metrics(split)


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    """The step after step 4 never ends (FAULT_HANG_AT): the first Ctrl-C cannot finish it, the second stops the run
    at once with one line and exit 130, and the step-4 checkpoint still loads and resumes."""
    run = tmp_path / "run"
    args = [*RUN, "--max-steps", "6", "--checkpoint-every", "4", "--out", str(run)]
    proc = _start(tmp_path, sys.executable, str(FAULTS), "-q", "train", *args, FAULT_HANG_AT="4")
    try:
        wait_for_file(
            run / "checkpoints" / "last.pt", proc, tmp_path / "stderr.txt", HANG_GUARD_S
        )  # written after step 4, before the hang
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # the first Ctrl-C waits for the step to end
            proc.wait(timeout=2)
        for _ in range(4):  # the second; sent again if the two arrived together (the handler then runs once)
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is not None:
                break
        assert proc.poll() == 130, f"exit status {proc.poll()} (None: still running) after a second Ctrl-C"
    finally:
        procs.reap(proc)
    assert _stderr(tmp_path).strip().splitlines() == ["resnetkit: interrupted"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert _train("--resume", str(run), "--no-progress") == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
