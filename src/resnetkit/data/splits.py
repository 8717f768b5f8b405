"""Seeded random splits: the one draw behind every held-out set, validation split and subset.

Every split draws `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`. Checkpoints re-create
their validation split from the seed and run.json records the held-out files, so these draws must never change:
tests/test_splits.py pins them with lists recorded from the code that trained the existing runs.
"""

from __future__ import annotations

import torch

from resnetkit.errors import DataError


def seeded_order(n: int, seed: int | torch.Generator) -> torch.Tensor:
    """A random permutation of range(n), the same for the same seed; a generator is drawn from (and advanced)."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)


def seeded_split(n: int, k: int, seed: int | torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(`k` indices of range(n) drawn at random, the other n - k), each sorted so both parts keep file order."""
    order = seeded_order(n, seed)
    return order[:k].sort().values, order[k:].sort().values


def stratified_split(
    labels: torch.Tensor, classes: list[str], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out indices, the rest), each sorted: `fraction` of every class, at least one image on each side.

    One generator serves the classes in label order, so the held-out files depend only on the seed and the files."""
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for label, name in enumerate(classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < 2:
            raise DataError(f"class {name!r} has {len(members)} image(s); a validation split needs at least 2")
        k = min(max(round(len(members) * fraction), 1), len(members) - 1)
        held_out.append(members[seeded_split(len(members), k, generator)[0]])
    held_idx = torch.cat(held_out).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held_idx] = False
    return held_idx, torch.nonzero(rest).flatten()
