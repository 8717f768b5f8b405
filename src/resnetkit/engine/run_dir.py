"""A run's folder: config.yaml, run.json, metrics.jsonl, curves.png and checkpoints/. Rank 0 alone writes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from resnetkit.config import ConfigError, TrainConfig, dump_yaml
from resnetkit.plots import plot_training_curves


def choose_run_dir(cfg: TrainConfig, resuming: bool) -> Path:
    """`cfg.out`, or runs/<model>-<data>-<time>. A new run never overwrites a folder that already holds one."""
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        run_dir = Path("runs") / f"{cfg.model}-{cfg.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not resuming and (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    return run_dir  # created by RunFolder.start once data and model are ready: a failed start leaves no folder


class RunFolder:
    """The files of one run. On processes other than rank 0 (`writer=False`) every write is skipped, so the
    training loop calls these unconditionally."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path, self.writer = Path(path), writer

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def start(self, cfg: TrainConfig, info: dict[str, Any]) -> None:
        """Create the folder with the resolved config, the run's record (`info`, as run.json) and empty metrics."""
        if not self.writer:
            return
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg.to_dict(), self.path / "config.yaml")
        (self.path / "run.json").write_text(json.dumps(info, indent=2, default=str))
        (self.path / "metrics.jsonl").write_text("")

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.writer:
            with (self.path / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.jsonl as a checkpoint recorded it: rows logged after that checkpoint (a worker lost mid-epoch)
        are dropped, and logged again when the resumed run reaches them."""
        if self.writer:
            (self.path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    def plot(self, history: list[dict[str, Any]], title: str) -> None:
        if self.writer:
            plot_training_curves(history, self.path / "curves.png", title=title)


def provenance(info: dict[str, Any]) -> dict[str, Any]:
    """A dataset's record for run.json, without the full per-file listing (the held-out list stays)."""
    return {k: v for k, v in info.items() if k != "files"}
