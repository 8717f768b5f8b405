"""Continuing a run: which flags a resumed run may change, and where a torchrun restart picks up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from resnetkit import distributed
from resnetkit.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

# Flags a resumed run may change; everything else must stay as the checkpoint recorded it.
RESUME_OVERRIDABLE = {
    "epochs",
    "max_steps",
    "progress",
    "device",
    "threads",
    "checkpoint_every",
    "early_stopping",
    "dist_timeout",
}


def resumed_config(ckpt: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's recorded config with the allowed `overrides` applied; any other change is refused."""
    saved = dict(ckpt["config"])
    changed = {k for k, v in overrides.items() if v is not None and saved.get(k) != v}
    refused = sorted(changed - RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"cannot change {', '.join(refused)} when resuming (only {', '.join(sorted(RESUME_OVERRIDABLE))})"
        )
    saved.update({k: overrides[k] for k in changed})
    saved["out"] = str(Path(ckpt["path"]).parent.parent)
    return TrainConfig.from_dict(saved, source=ckpt["path"])


def restart_point(cfg: TrainConfig, env: distributed.DistEnv) -> Path | None:
    """After torchrun restarted the workers (--max-restarts), the checkpoint to continue from: the `out` folder's
    last one, or None to start anew (no restart, no run folder, or lost before the first checkpoint)."""
    if env.restart_count == 0:
        return None
    if not cfg.out:
        log.warning("restarted by torchrun, but without --out there is no run folder to continue: starting anew")
        return None
    last = Path(cfg.out) / "checkpoints" / "last.pt"
    if not distributed.decided_on_main(last.is_file):
        return None
    log.info("restart %d: continuing from %s", env.restart_count, last)
    return last
