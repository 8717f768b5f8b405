"""torchrun / DDP on CPU with gloo: sharding, SyncBatchNorm, 2 processes = 1 process, a lost worker, evaluation
counts, and the launch mistakes users make. Multi-process cases run real torchrun launches of the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit import distributed
from resnetkit.cli.main import main
from resnetkit.data.cifar import load_sample
from resnetkit.data.loader import BatchLoader
from resnetkit.distributed import DistEnv, DistributedError, SyncBatchNorm2d, env_from_os, shard
from resnetkit.engine.trainer import LOG_EVERY
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for

import procs
from conftest import REPO, shared_data, wait_for_file

FAULTS = Path(__file__).with_name("faults.py")  # the real CLI with step callbacks that inject faults
SAMPLE_RUN = ["--data", "sample", "--model", "resnet20", "--no-progress", "--set", "dist_timeout=120"]
NARROW = "widths: [8, 16, 32]"  # a narrow ResNet-20: what these tests check does not depend on its width
SAMPLE_RUN += ["--set", f"model_kwargs={{{NARROW}}}"]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment for a launch; a PYTHONPATH set by the caller (a scratch copy of src) comes first."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO / "src")) if p)
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def torchrun(nproc: int, *args: str, restarts: int = 0, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N [--max-restarts K] ARGS` (ARGS: `-m resnetkit ...` or a script)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [f"--max-restarts={restarts}", "--monitor-interval=0.5", *args]
    return procs.run(cmd, timeout=timeout, env=_env(**env), cwd=REPO)  # reaped with its workers, whatever happens


def resnetkit(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return procs.resnetkit("-q", *args, timeout=timeout, env=_env(**env), cwd=REPO)


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _same_weights(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("train_time_s", "train_images_per_s", "data_wait_share")} for r in rows
    ]


# --- launchers in the background: always reaped, workers included ---------------------------------------------
HANG_GUARD_S = 300  # only a hang meets these bounds: every wait ends when the awaited thing happens


def _launch(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start `cmd`; its output (and its workers') goes to the file `log`, never a pipe that could fill up."""
    return procs.start(cmd, log, env=_env(**env), cwd=REPO)


def _worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    for pid in procs.descendants(launcher.pid):
        with contextlib.suppress(OSError):
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
    raise AssertionError(f"no worker of rank {rank} under process {launcher.pid}")


# --- one process: the pieces -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 10_000, 10_001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_exactly_once(n: int, world: int) -> None:
    items = [i for r in range(world) for i in shard(n, r, world)]
    assert items == list(range(n))
    sizes = [len(shard(n, r, world)) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


def test_environment_parsing() -> None:
    assert env_from_os({}) == DistEnv()
    env = env_from_os({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert (env.rank, env.world_size, env.enabled, env.is_main, env.restart_count) == (1, 2, True, False, 1)
    with pytest.raises(DistributedError, match="RANK=2 is not within WORLD_SIZE=2"):
        env_from_os({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="malformed"):
        env_from_os({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("world", [2, 4])
def test_process_shards_of_a_batch_are_the_one_process_batch(world: int) -> None:
    """Same global order *and* the same augmentation draws: N processes see exactly the images 1 process sees."""
    data = load_sample("train")
    prep = preprocessing_for(create_model("resnet20").default_cfg, "cifar", cutout=8)
    whole = BatchLoader(data, prep, batch_size=64, train=True, seed=3)
    parts = [BatchLoader(data, prep, batch_size=64, train=True, seed=3, rank=r, world_size=world) for r in range(world)]
    assert len(parts[0]) == len(whole)
    for epoch in (0, 1):
        for batch in (0, 5):
            x, y = next(whole.epoch(epoch, batch))
            pieces = [next(p.epoch(epoch, batch)) for p in parts]
            assert all(px.shape[0] == 64 // world for px, _ in pieces)
            assert torch.equal(torch.cat([px for px, _ in pieces]), x)
            assert torch.equal(torch.cat([py for _, py in pieces]), y)


def test_evaluation_shards_cover_the_set_once() -> None:
    data = load_sample("test")
    prep = preprocessing_for(create_model("resnet20").default_cfg, "cifar")
    labels = [y for r in range(3) for _, y in BatchLoader(data, prep, batch_size=64, train=False, rank=r, world_size=3)]
    assert torch.equal(torch.cat(labels), data.labels)


def test_batch_not_divisible_by_the_processes_is_refused() -> None:
    data = load_sample("test")
    prep = preprocessing_for(create_model("resnet20").default_cfg, "cifar")
    with pytest.raises(ValueError, match="not divisible by 3"):
        BatchLoader(data, prep, batch_size=64, train=True, rank=0, world_size=3)


def test_sync_batchnorm_is_batchnorm_in_one_process() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    sync = SyncBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(4, 8, 5, 5) * 3 + 1
    assert torch.allclose(sync(x), bn(x), atol=1e-6)
    assert torch.allclose(sync.running_var, bn.running_var) and int(sync.num_batches_tracked) == 1
    model = create_model("resnet20")
    converted = distributed.convert_sync_batchnorm(create_model("resnet20"), "cpu")
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert sum(isinstance(m, SyncBatchNorm2d) for m in converted.modules()) == 19


# --- several processes -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_follow_one_process(tmp_path: Path, keep_threads) -> None:
    """The real runner: `torchrun --nproc-per-node 2 -m resnetkit train --sync-bn` and a 1-process `resnetkit
    train`, same seed and global batch 64, take the same 10 steps over 2 epochs (evaluations and checkpoints too).

    In float64 (`--set dtype=float64`) the test compares the algorithms: the final weights agree to 1e-8 (measured:
    6e-10) and the hit counts exactly; the losses to 1e-6 relative (measured: 1e-7), as the loop sums them and
    evaluation reads its logits in float32. In float32 two runs differ by round-off (reduction order, memory
    layout) that training amplifies, as two 1-process runs with different layouts also do. Without SyncBatchNorm
    each process normalises by its own 32 images: a different computation, visibly. Each process takes half of
    every batch and half of the 250 test images; the test metrics count each image once.

    (One test: it was two, a hand-written DDP loop and the real runner, each paying for its own 1- and 2-process
    float64 runs of the same property; the evaluation count over 2 processes was a third.)"""
    args = ["train", *SAMPLE_RUN, "--batch-size", "64", "--train-subset", "320", "--test-subset", "250"]
    args += ["--epochs", "2", "--no-compile", "--set", "dtype=float64"]
    one, two, local = tmp_path / "one", tmp_path / "two", tmp_path / "local_bn"
    assert main(["-q", *args, "--sync-bn", "--out", str(one)]) == 0  # the one process in this one
    for out, sync in ((two, ["--sync-bn"]), (local, [])):
        result = torchrun(2, "-m", "resnetkit", "-q", *args, *sync, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((two / "run.json").read_text())
    assert (info["world_size"], info["batch_size_per_process"]) == (2, 32)
    a, b = _last(one), _last(two)
    assert a["step"] == b["step"] == 10 and b["model"]["fc.weight"].dtype == torch.float64
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=0, atol=1e-8), key  # integer counters: exactly
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [5, 10]
    assert rows[0][1]["train_loss"] < rows[0][0]["train_loss"] - 0.1, rows[0]  # training moves (epoch means)
    exact = ("train_top1", "test_top1", "test_top5", "test_n", "lr")
    for ra, rb in zip(*rows, strict=True):
        assert [ra[k] for k in exact] == [rb[k] for k in exact] and rb["test_n"] == 250
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
        assert rb["test_loss"] == pytest.approx(ra["test_loss"], rel=1e-6)
    # local BatchNorm: the same launch, another computation (the comparison above can tell them apart)
    c = _last(local)
    assert c["step"] == 10 and not c["config"]["sync_bn"]
    assert (c["model"]["fc.weight"] - a["model"]["fc.weight"]).abs().max() > 1e-4


def test_lost_worker_is_restarted_and_the_run_resumes(tmp_path: Path, capsys, keep_threads) -> None:
    """torchrun --max-restarts 1: rank 1 dies (SIGKILL) at step 12; the restart resumes from the step-10
    checkpoint and ends with exactly the weights of an undisturbed 2-process run, SyncBatchNorm and stochastic
    depth on. Stochastic depth draws its masks from each process's global RNG: every process must draw at steps
    11.. the masks the undisturbed run drew, or the weights part visibly. (One test: it was two, each paying for the
    same two launches, one with --sync-bn, one with drop_path_rate.)"""
    args = [str(FAULTS), "train", *SAMPLE_RUN, "--batch-size", "64", "--max-steps", "16", "--checkpoint-every", "5"]
    args += ["--sync-bn", "--set", f"model_kwargs={{drop_path_rate: 0.2, {NARROW}}}"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    result = torchrun(2, *args, "--out", str(clean))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, *args, "--out", str(killed), restarts=1, FAULT_KILL_AT="12")
    assert result.returncode == 0, result.stderr[-3000:]
    # which worker torchrun reports first (the killed one, or its peer failing in a collective) depends on timing
    assert "restart 1: continuing from" in result.stderr and "restart 2" not in result.stderr
    a, b = _last(clean), _last(killed)
    assert a["step"] == b["step"] == 16 and b["config"]["sync_bn"] is True
    assert b["config"]["model_kwargs"] == {"drop_path_rate": 0.2, "widths": [8, 16, 32]}
    _same_weights(a, b)
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [16] and rows[0]["train_loss"] == pytest.approx(a["history"][0]["train_loss"])
    # the checkpoint of a 2-process run loads in one process: evaluation, and resuming with another world size
    capsys.readouterr()
    assert main(["-q", "eval", "--checkpoint", str(killed), "--data", "sample", "--json", "--no-compile"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 500
    assert main(["-q", "train", "--resume", str(killed), "--max-steps", "19", "--no-progress"]) == 0
    assert _last(killed)["step"] == 19


# 2 processes, global batch 64: 31 steps an epoch. Ctrl-C is acted on where the processes agree (every LOG_EVERY
# steps and at an epoch's end), so a SIGINT after step 5 stops the run at step 20, 31 or 40.
CTRL_C_RUN = [*SAMPLE_RUN, "--batch-size", "64", "--max-steps", "50", "--checkpoint-every", "5"]


@pytest.fixture(scope="module")
def undisturbed_two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    run = tmp_path_factory.mktemp("undisturbed") / "run"
    result = torchrun(2, "-m", "resnetkit", "train", *CTRL_C_RUN, "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    yield run


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torchrun", "rank 1"])
def test_ctrl_c_stops_every_process_at_the_same_step_and_the_run_resumes(
    tmp_path: Path, undisturbed_two_process_run: Path, target: str
) -> None:
    """Ctrl-C in a terminal reaches torchrun alone (its workers run in sessions of their own); torchrun sends each
    worker one SIGINT. A SIGINT can also reach one worker alone (`kill -INT`). Either way every process stops at
    the same step, rank 0 saves and says so once, no worker fails otherwise, and the run resumes to the weights of
    an undisturbed run."""
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["--monitor-interval=0.5", "-m", "resnetkit", "train", *CTRL_C_RUN, "--out", str(run)]
    launcher = _launch(cmd, log)
    try:
        wait_for_file(run / "checkpoints" / "last.pt", launcher, log, HANG_GUARD_S)  # step 5 is done
        if target == "torchrun":
            launcher.send_signal(signal.SIGINT)
        else:
            os.kill(_worker_pid(launcher, 1), signal.SIGINT)
        assert launcher.wait(timeout=HANG_GUARD_S) != 0  # torchrun reports its workers' 130 (or its own SIGINT)
    finally:
        procs.reap(launcher)
    output = log.read_text()
    step = _last(run)["step"]
    assert step in {s for s in range(6, 50) if s % LOG_EVERY == 0 or s == 31}, output[-3000:]
    assert re.search(rf"resnetkit: interrupted at epoch \d, step {step}; checkpoint .* is intact", output)
    assert output.count("resnetkit: interrupted") == 1  # rank 0 says so, once
    worker_frame = r'File "[^"]*[/\\]resnetkit[/\\]([^"/\\]+[/\\])?[^"/\\]+\.py"'  # resnetkit's code, not torchrun's
    assert not re.search(worker_frame, output), output[-3000:]  # no worker traceback (torchrun prints its own)
    # torchrun reports 130 for a worker that stopped on Ctrl-C; once one has exited it tears the others down with
    # SIGTERM (-15) if they are still exiting, which depends on timing (seen under load): both are clean stops
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", output)) <= {"130", "-15"}, output[-3000:]
    assert "forcefully" not in output, output[-3000:]  # no worker outlived torchrun's grace period
    result = torchrun(2, "-m", "resnetkit", "train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _last(undisturbed_two_process_run), _last(run)
    assert a["step"] == b["step"] == 50
    _same_weights(a, b)
    # the interrupted epoch's training loss: rank 0 carries the global partial sum on, each process summed its own
    # (float32, another order of additions: measured 4e-8 apart); everything else is equal
    rows_a, rows_b = _metrics(undisturbed_two_process_run), _metrics(run)
    assert [r.pop("train_loss") for r in rows_b] == pytest.approx([r.pop("train_loss") for r in rows_a], rel=1e-6)
    assert rows_a == rows_b


@pytest.mark.parametrize("nproc", [3])
def test_distributed_evaluation_counts_each_test_image_once(tmp_path: Path, nproc: int, capsys) -> None:
    """3 processes (10,000 is not divisible by 3): the test metrics cover 10,000 images, as one process. (2 processes
    are counted in test_two_processes_follow_one_process.)"""
    data = shared_data("cifar-10-batches-bin")
    run = tmp_path / "run"
    args = ["train", "--data", "cifar10", "--data-dir", str(data), "--train-subset", "480", "--batch-size", "48"]
    args += ["--max-steps", "4", "--out", str(run), "--no-progress", "--set", f"model_kwargs={{{NARROW}}}"]
    result = torchrun(nproc, "-m", "resnetkit", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["test_n"] == 10_000
    info = json.loads((run / "run.json").read_text())
    assert (info["world_size"], info["batch_size_per_process"]) == (nproc, 48 // nproc)
    capsys.readouterr()
    assert main(["-q", "eval", "--checkpoint", str(run), "--data", "cifar10", "--data-dir", str(data), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["n"] == 10_000
    assert abs(single["top1"] - row["test_top1"]) <= 2e-4  # eval's folded fast path: at most one tie in 10,000


def test_two_nodes_with_c10d_rendezvous(tmp_path: Path) -> None:
    """A multi-node launch, simulated with two torchrun agents on this machine (--nnodes 2, c10d rendezvous).

    The test itself hosts the rendezvous store (`is_host=false`: both agents are clients, in any start order) on a
    port it holds throughout: a port found free and released could be taken before an agent bound it, and an agent
    that connects to a stranger waits for its rendezvous timeout. On real machines node 0's agent hosts it."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    cmd += [f"--rdzv-endpoint=127.0.0.1:{store.port}", "--rdzv-id=nodes-test", "--rdzv-conf=is_host=false"]
    cmd += ["-m", "resnetkit", "train", *SAMPLE_RUN, "--batch-size", "64", "--max-steps", "3", "--out", str(run)]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = [_launch(cmd, log) for log in logs]
    try:
        codes = [node.wait(timeout=HANG_GUARD_S) for node in nodes]
    finally:
        for node in nodes:
            procs.reap(node)
        del store
    assert codes == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and _last(run)["step"] == 3


# --- launch mistakes ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launched(monkeypatch: pytest.MonkeyPatch, capsys, *args: str, **env: str) -> tuple[int, list[str]]:
    """`resnetkit -q ARGS` in this process, as a process torchrun started would see its environment (the variables
    are what is tested, not a new interpreter): the exit code and the lines on stderr."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(["-q", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_batch_not_divisible_by_world_size_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    code, lines = _launched(
        monkeypatch,
        capsys,
        "train",
        *SAMPLE_RUN,
        "--batch-size",
        "64",
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        RANK="0",
        WORLD_SIZE="3",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    assert code == 2 and not torch.distributed.is_initialized()
    assert lines == [
        "resnetkit: error: batch_size 64 (the global batch) is not divisible by the 3 processes; choose a multiple of 3"
    ]


def test_unreachable_rendezvous_fails_after_the_timeout(tmp_path: Path, monkeypatch, capsys) -> None:
    """dist_timeout=2 is what bounds the wait: the default (300 s) would outlast the test's timeout."""
    with socket.socket() as held:  # bound and not listening for the whole test: connections to it are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        code, lines = _launched(
            monkeypatch,
            capsys,
            "train",
            *SAMPLE_RUN,
            "--set",
            "dist_timeout=2",
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "r"),
            RANK="1",
            WORLD_SIZE="2",
            LOCAL_RANK="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    assert code == 2 and not torch.distributed.is_initialized()
    assert len(lines) == 1 and f"rank 1 could not join the process group at 127.0.0.1:{port} within 2 s" in lines[0]


def test_missing_endpoint_variables(tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["train", *SAMPLE_RUN, "--max-steps", "1", "--out", str(tmp_path / "r")]
    code, lines = _launched(monkeypatch, capsys, *args, RANK="0", WORLD_SIZE="2")
    assert code == 2 and len(lines) == 1
    assert "MASTER_ADDR and MASTER_PORT not set: launch with torchrun" in lines[0]
