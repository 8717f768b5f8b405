"""torchrun / DDP on CPU with gloo: sharding, SyncBatchNorm, 2 processes = 1 process, a lost worker, evaluation
counts, and the launch mistakes users make. Multi-process cases run real torchrun launches of the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit import distributed
from resnetkit.data.cifar import load_sample
from resnetkit.data.loader import BatchLoader
from resnetkit.distributed import DistEnv, DistributedError, SyncBatchNorm2d, env_from_os, shard
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for

from conftest import REPO, shared_data

WORKER = Path(__file__).with_name("distributed_worker.py")
FAULTS = Path(__file__).with_name("faults.py")  # the real CLI with step callbacks that inject faults
SAMPLE_RUN = ["--data", "sample", "--model", "resnet20", "--no-progress", "--set", "dist_timeout=120"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **extra}


def torchrun(nproc: int, *args: str, restarts: int = 0, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N [--max-restarts K] ARGS` (ARGS: `-m resnetkit ...` or a script)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [f"--max-restarts={restarts}", "--monitor-interval=0.5", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=REPO)


def resnetkit(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "resnetkit", "-q", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=REPO)


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


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
def test_two_processes_follow_one_process(tmp_path: Path) -> None:
    """SyncBatchNorm, global batch 128, seed 0: 2 processes x 64 take the steps 1 process x 128 takes.

    In float64, so the test compares the algorithms: the trajectories agree to 1e-8 (measured: 2e-11 on the loss,
    3e-10 on the weights). In float32 the two runs differ by round-off (reduction order, memory layout) that 20
    steps of training amplify to ~5e-2 on the loss, as two 1-process runs with different layouts also do.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    for nproc, out in ((1, one), (2, two)):
        result = torchrun(nproc, str(WORKER), "--sync-bn", "--float64", "--steps", "20", "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
    a = json.loads((one / "losses.json").read_text())["losses"]
    b = json.loads((two / "losses.json").read_text())["losses"]
    assert len(a) == len(b) == 20 and a[-1] < a[0] - 0.3
    assert max(abs(u - v) for u, v in zip(a, b, strict=True)) < 1e-8
    wa, wb = (torch.load(p / "weights.pt", weights_only=True) for p in (one, two))
    for key, value in wa.items():
        if value.is_floating_point():
            assert torch.allclose(value, wb[key], rtol=0, atol=1e-8), key
    # without SyncBatchNorm each process normalises by its own 64 images: a different computation, visibly
    result = torchrun(2, str(WORKER), "--float64", "--steps", "3", "--out", str(tmp_path / "local_bn"))
    assert result.returncode == 0, result.stderr[-3000:]
    c = json.loads((tmp_path / "local_bn" / "losses.json").read_text())["losses"]
    assert abs(c[2] - a[2]) > 1e-6


def test_lost_worker_is_restarted_and_the_run_resumes(tmp_path: Path) -> None:
    """torchrun --max-restarts 1: rank 1 dies (SIGKILL) at step 12; the restart resumes from the step-10
    checkpoint and ends with exactly the weights of an undisturbed 2-process run."""
    args = [str(FAULTS), "train", *SAMPLE_RUN, "--batch-size", "64", "--max-steps", "30"]
    args += ["--checkpoint-every", "5", "--sync-bn"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    result = torchrun(2, *args, "--out", str(clean))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, *args, "--out", str(killed), restarts=1, FAULT_KILL_AT="12")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restart 1: continuing from" in result.stderr and "exitcode: -9" in result.stderr  # SIGKILL
    a, b = _last(clean), _last(killed)
    assert b["step"] == 30 and b["config"]["sync_bn"] is True
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [30] and rows[0]["train_loss"] == pytest.approx(a["history"][0]["train_loss"])
    # the checkpoint of a 2-process run loads in one process: evaluation, and resuming with another world size
    result = resnetkit("eval", "--checkpoint", str(killed), "--data", "sample", "--json", "--no-compile")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 500
    result = resnetkit("train", "--resume", str(killed), "--max-steps", "33", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert _last(killed)["step"] == 33


@pytest.mark.parametrize("nproc", [2, 3])
def test_distributed_evaluation_counts_each_test_image_once(tmp_path: Path, nproc: int) -> None:
    """2 and 3 processes (10,000 is not divisible by 3): the test metrics cover 10,000 images, as one process."""
    data = shared_data("cifar-10-batches-bin")
    run = tmp_path / "run"
    result = torchrun(
        nproc, "-m", "resnetkit", "train", "--data", "cifar10", "--data-dir", str(data), "--train-subset", "480",
        "--batch-size", "48", "--max-steps", "4", "--out", str(run), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["test_n"] == 10_000
    info = json.loads((run / "run.json").read_text())
    assert (info["world_size"], info["batch_size_per_process"]) == (nproc, 48 // nproc)
    result = resnetkit("eval", "--checkpoint", str(run), "--data", "cifar10", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    single = json.loads(result.stdout)
    assert single["n"] == 10_000
    assert abs(single["top1"] - row["test_top1"]) <= 2e-4  # eval's folded fast path: at most one tie in 10,000


def test_two_nodes_with_c10d_rendezvous(tmp_path: Path) -> None:
    """A multi-node launch, simulated with two torchrun agents on this machine (--nnodes 2, c10d rendezvous)."""
    port, run = _free_port(), tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    cmd += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nodes-test", "-m", "resnetkit", "train", *SAMPLE_RUN]
    cmd += ["--batch-size", "64", "--max-steps", "3", "--out", str(run)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)]
    time.sleep(1)  # the first agent hosts the rendezvous store
    nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO))
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and _last(run)["step"] == 3


# --- launch mistakes ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_not_divisible_by_world_size_is_one_line(tmp_path: Path) -> None:
    result = resnetkit(
        "train", *SAMPLE_RUN, "--batch-size", "64", "--max-steps", "1", "--out", str(tmp_path / "r"),
        RANK="0", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "resnetkit: error: batch_size 64 (the global batch) is not divisible by the 3 processes; choose a multiple of 3"
    ]


def test_unreachable_rendezvous_fails_after_the_timeout(tmp_path: Path) -> None:
    port = _free_port()  # nobody listens there
    t0 = time.monotonic()
    result = resnetkit(
        "train", *SAMPLE_RUN, "--set", "dist_timeout=3", "--max-steps", "1", "--out", str(tmp_path / "r"),
        RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"rank 1 could not join the process group at 127.0.0.1:{port} within 3 s" in lines[0]
    assert time.monotonic() - t0 < 60


def test_missing_endpoint_variables(tmp_path: Path) -> None:
    result = resnetkit("train", *SAMPLE_RUN, "--max-steps", "1", "--out", str(tmp_path / "r"), RANK="0", WORLD_SIZE="2")
    assert result.returncode == 2
    assert "MASTER_ADDR and MASTER_PORT not set: launch with torchrun" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
