"""Exact and near duplicates, within a split and between the test and training splits (leakage).

Exact: equal pixel hashes (the decoded pixels; CIFAR's stored 32x32 images, an image folder's full-resolution
decoded photo). Near: cosine similarity of embeddings — by default a pixel signature (colour layout at 4x4 and
structure at 16x16, `pixel_signature`), or a model's pooled features (`--embedding model`). A pair's similarity is the
larger of the two images' and of one image and the other's mirror image, so a flipped copy scores as a copy.
Similarities are computed in blocks of rows, so 60,000 images need a block's row of the matrix at a time, never the
whole of it; each image keeps its `top_k` most similar partners above the threshold.

Why pixels by default (measured on 1,000 CIFAR-10 images and a JPEG (quality 60), a 20-pixel resize and a mirror
copy of each, docs/audit.md, 2,000 images): resnet20.rk_cifar10's pooled features score a JPEG copy as low as -0.21 (5th
percentile 0.35) while unrelated images reach 0.99 — a classifier's last features say "cat", not "this cat"; the
pixel signature scores every copy >= 0.90 (5th percentile 0.97) and no unrelated pair of 2,000 images above 0.84.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from resnetkit.audit.options import EMBEDDINGS, TOP_K
from resnetkit.audit.probabilities import eval_loader, placed
from resnetkit.errors import DataError
from resnetkit.runtime import Predictor

BLOCK = 1024


@dataclass(frozen=True)
class Pair:
    """Two images (positions in their splits; within one split a < b) and how alike they are."""

    a: int
    b: int
    similarity: float
    kind: str  # "exact" or "near"


PIXEL_GRID = 16  # the pixel signature's structure part: the image at 16x16 ...
LAYOUT_GRID = 4  # ... minus its 4x4 colour layout, the other part


@torch.inference_mode()
def embed(
    predictor: Predictor, dataset: Any, kind: str = "pixels", *, workers: int | None = None, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, embeddings of the mirror images), each (N, D) float32, of every image of `dataset` as
    `predictor`'s preprocessing prepares it. `kind` "pixels": `pixel_signature`; "model": the model's pooled
    features.
    Unreadable streamed images get rows of NaN."""
    if kind not in EMBEDDINGS:
        raise DataError(f"unknown embedding {kind!r}; choose one of {', '.join(EMBEDDINGS)}")
    model = _feature_model(predictor) if kind == "model" else None
    loader = eval_loader(predictor, dataset, workers)
    rows, mirrored = [], []
    for x, _ in tqdm(loader, desc=f"embedding ({kind})", unit="batch", disable=not progress, leave=False):
        both = torch.cat([x, x.flip(-1)])
        if model is None:
            features = pixel_signature(both.float())
        else:
            features = model.forward_head(model.forward_features(both), pre_logits=True).float()
        rows.append(features[: len(x)])
        mirrored.append(features[len(x) :])
    return placed(torch.cat(rows), loader, len(dataset)), placed(torch.cat(mirrored), loader, len(dataset))


def pixel_signature(x: torch.Tensor) -> torch.Tensor:
    """(N, 3 x 4 x 4 + 3 x 16 x 16) signatures of a batch: the colour layout (the image at 4x4, minus its mean) and
    the structure (the image at 16x16 minus its 4x4 layout upsampled: edges and texture), each of unit length. The
    cosine of two signatures is the mean of the two parts' correlations: two skies of the same blue with different
    aircraft agree on layout, not on structure."""
    fine = F.adaptive_avg_pool2d(x, PIXEL_GRID)
    coarse = F.adaptive_avg_pool2d(fine, LAYOUT_GRID)
    structure = (fine - F.interpolate(coarse, size=PIXEL_GRID, mode="bilinear", align_corners=False)).flatten(1)
    layout = coarse.flatten(1)
    layout = layout - layout.mean(dim=1, keepdim=True)
    return torch.cat([F.normalize(layout, dim=1), F.normalize(structure, dim=1)], dim=1) / 2**0.5


def _feature_model(predictor: Predictor) -> Any:
    if not predictor.supports_gradients:
        raise DataError(
            f"{predictor.source} is an exported {predictor.runtime} file: model embeddings need the PyTorch model's "
            "features (use its checkpoint or registered weights with --embed-model)"
        )
    model = predictor.gradient_model().eval()
    if not hasattr(model, "forward_features"):
        raise DataError(f"{predictor.source}: the model has no forward_features to embed images with")
    return model


def normalised(embeddings: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """Centred on `centre` (model features: pooled ReLU features are all positive; centred, unrelated images score
    near 0) and scaled to unit length; NaN rows (unread images) become zero (similar to nothing)."""
    x = embeddings if centre is None else embeddings - centre
    return torch.nn.functional.normalize(x.nan_to_num(0.0), dim=1)


def similar_pairs(
    queries: torch.Tensor,
    keys: tuple[torch.Tensor, torch.Tensor] | None,
    threshold: float,
    *,
    mirrored: torch.Tensor | None = None,
    top_k: int = TOP_K,
    progress: bool = True,
    desc: str = "comparing",
) -> tuple[list[Pair], torch.Tensor]:
    """Pairs (query, key) with cosine similarity >= `threshold`, each query keeping its `top_k` best, and every
    query's highest similarity. A key's similarity is the larger of its own and its mirror image's: `keys` is
    (embeddings, mirror embeddings); `keys=None`: the queries among themselves, with `mirrored` their mirror
    embeddings (a < b, each pair once, no self-pairs)."""
    within = keys is None
    plain, flipped = (queries, mirrored) if keys is None else keys
    best = torch.full((len(queries),), -1.0)
    found: dict[tuple[int, int], float] = {}
    k = min(top_k, len(plain) - int(within))
    if k < 1:
        return [], best
    starts = range(0, len(queries), BLOCK)
    for start in tqdm(starts, desc=desc, unit="block", disable=not progress, leave=False):
        block = queries[start : start + BLOCK]
        sims = block @ plain.T
        if flipped is not None:
            sims = torch.maximum(sims, block @ flipped.T)
        if within:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -2.0  # not itself
        values, cols = sims.topk(k, dim=1)
        best[start : start + len(values)] = values[:, 0]
        for r, c in torch.nonzero(values >= threshold).tolist():
            a, b = start + r, int(cols[r, c])
            key = (min(a, b), max(a, b)) if within else (a, b)
            found[key] = float(values[r, c])
    pairs = [Pair(a, b, s, "near") for (a, b), s in found.items()]
    return pairs, best


def exact_pairs(hashes_a: list[str | None], hashes_b: list[str | None] | None = None) -> list[Pair]:
    """Pairs of equal hashes: within one list (a < b, every member of a group paired with its first), or between two
    lists (every (a, b) with equal hashes). None (an unread image) matches nothing."""
    if hashes_b is None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes_a):
            if h is not None:
                groups[h].append(i)
        return [Pair(m[0], other, 1.0, "exact") for m in groups.values() for other in m[1:]]
    index: dict[str, list[int]] = defaultdict(list)
    for j, h in enumerate(hashes_b):
        if h is not None:
            index[h].append(j)
    return [Pair(i, j, 1.0, "exact") for i, h in enumerate(hashes_a) if h is not None for j in index.get(h, [])]


def merged(exact: Iterable[Pair], near: Iterable[Pair]) -> list[Pair]:
    """Exact pairs, and near pairs that are not exact ones; most similar first (exact before near at equal scores)."""
    pairs = {(p.a, p.b): p for p in near}
    pairs.update({(p.a, p.b): p for p in exact})
    return sorted(pairs.values(), key=lambda p: (-p.similarity, p.kind != "exact", p.a, p.b))


def pixel_hashes(images: torch.Tensor) -> list[str | None]:
    """A hash of each stored uint8 image's pixels (CIFAR, where the stored image is the original)."""
    import hashlib

    flat = images.reshape(len(images), -1).contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]
