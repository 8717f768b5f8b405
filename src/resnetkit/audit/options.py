"""What `resnetkit audit` takes, and its choices: imported by the CLI without the audit's heavy modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnetkit.config import DATA_CHOICES

AUDIT_DATA = tuple(d for d in DATA_CHOICES if d != "coco")  # classification data
EMBEDDINGS = ("pixels", "model")  # near duplicates by a pixel signature or a model's pooled features
METHODS = ("prune_by_noise_rate", "confident_joint")  # confident learning's ways to flag images
DEFAULT_THRESHOLD = 0.85  # similarity of a near duplicate (docs/audit.md: chosen on CIFAR-10's test/train pairs)
TOP_K = 5  # most similar partners kept per image


@dataclass
class AuditOptions:
    """What `resnetkit audit` takes (see its --help)."""

    data: str
    out: str
    data_dir: str | None = None
    checkpoint: str | None = None
    folds: int | None = None
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    embed_model: str | None = None
    embedding: str = "pixels"
    threshold: float = DEFAULT_THRESHOLD
    top_k: int = TOP_K
    method: str = METHODS[0]
    seed: int = 0
    val_fraction: float = 0.1
    download: bool = False
    progress: bool = True
    workers: int | None = None
    show: int = 40
