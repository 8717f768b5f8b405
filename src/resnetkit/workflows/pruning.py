"""`resnetkit prune`: prune a trained ResNet's channels to a MACs target, then fine-tune it with the ordinary
training loop (recipes, resume, torchrun, and a teacher for distillation all work as in `resnetkit train`).

The pruned, not yet fine-tuned weights are written into the run folder (`pruned.safetensors`, with `prune.json`
saying what was removed); the run's config names them as its starting weights and the pruned widths as model
kwargs, so `resnetkit train --resume RUN` continues it and every checkpoint rebuilds the pruned network.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from resnetkit.compress import DEFAULT_ROUND_TO, PruneResult, PruningError, prune_to_macs
from resnetkit.config import TrainConfig
from resnetkit.engine.runner import RunResult, run_training
from resnetkit.files import atomic_write
from resnetkit.runtime import Predictor
from resnetkit.weights.io import save_state_dict

log = logging.getLogger(__name__)
PRUNED_WEIGHTS = "pruned.safetensors"


def prune_and_finetune(
    source: str, target: float, method: str, cfg: TrainConfig, seed: int = 0, round_to: int = DEFAULT_ROUND_TO
) -> tuple[PruneResult, RunResult]:
    """Prune `source` (a checkpoint, run folder, weights file or registered name) to `target` x its MACs, inner
    widths in multiples of `round_to`, and fine-tune the result as `cfg` says (its model, weights and model kwargs
    are set here)."""
    loaded = Predictor.load(source)
    if not loaded.supports_gradients:
        raise PruningError(f"{source} is an exported file: prune the checkpoint it was made from")
    model = loaded.gradient_model()
    size = (model.default_cfg.input_size[0], loaded.preprocessing.size, loaded.preprocessing.size)
    result = prune_to_macs(model, target, method, size, seed, round_to)
    out = Path(cfg.out or f"runs/{loaded.architecture}-pruned-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "checkpoints" / "last.pt").exists():
        raise PruningError(f"{out} already holds a run; continue it with `resnetkit train --resume {out}`")
    # every torchrun process prunes the same way and writes the same bytes (atomically): no process waits on another
    weights = save_state_dict(result.model.state_dict(), out / PRUNED_WEIGHTS)
    record = result.to_dict() | {"source": str(source), "architecture": loaded.architecture}
    atomic_write(out / "prune.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    log.info(
        "pruned %s with %s: %.1f%% of its MACs (%d -> %d), %d -> %d parameters",
        loaded.architecture,
        method,
        100 * result.macs_ratio,
        result.macs_before,
        result.macs_after,
        result.params_before,
        result.params_after,
    )
    kwargs = dict(result.model.model_kwargs)
    kwargs.pop("num_classes", None)  # the run sets it from its data
    run_cfg = cfg.replace(model=loaded.architecture, model_kwargs=kwargs, weights=str(weights), out=str(out))
    return result, run_training(run_cfg)
