"""The file pass over an image folder: every file decoded once, in full, to find what does not decode (or is
truncated) and what is odd (greyscale, CMYK, 16-bit, alpha, extreme sizes or shapes, EXIF-turned), and to hash its
pixels for the exact-duplicate search. Nothing here raises for a bad file: each becomes a finding."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from resnetkit.data.images import ALPHA_MODES, FULL_SCALE, ImageFacts, image_channels, inspect_image
from resnetkit.errors import DataError

MIN_SIDE = 32  # a photo smaller than this on a side holds little to learn from
MAX_SIDE = 10_000
MAX_ASPECT = 3.0  # longer side over shorter side; a centre crop then loses two thirds of the picture
WORKERS = 2  # decoding threads (PIL releases the GIL while decoding)


@dataclass(frozen=True)
class FileFinding:
    """One problem with one file; `path` relative to the data folder."""

    path: str
    split: str
    label: str
    problem: str  # unreadable, not_an_image, greyscale, cmyk, high_bit_depth, alpha, too_small, too_large,
    # extreme_aspect, exif_rotated
    detail: str


@dataclass
class FilePass:
    findings: list[FileFinding]
    hashes: dict[str, str | None]  # path -> pixel hash (None: unreadable)
    checked: int


def _problems(facts: ImageFacts) -> list[tuple[str, str]]:
    found = []
    size = f"{facts.width}x{facts.height}"
    if facts.mode in FULL_SCALE:
        found.append(("high_bit_depth", f"mode {facts.mode}: scaled to 8 bits when read"))
    if image_channels(facts.mode) == 1:
        found.append(("greyscale", f"mode {facts.mode}: read as three equal channels"))
    if facts.mode == "CMYK":
        found.append(("cmyk", "CMYK: converted to RGB when read (colours may shift)"))
    if facts.mode in ALPHA_MODES:
        found.append(("alpha", f"mode {facts.mode}: transparent pixels are composited onto white"))
    if min(facts.width, facts.height) < MIN_SIDE:
        found.append(("too_small", f"{size}: a side under {MIN_SIDE} pixels"))
    if max(facts.width, facts.height) > MAX_SIDE:
        found.append(("too_large", f"{size}: a side over {MAX_SIDE} pixels"))
    aspect = max(facts.width, facts.height) / max(min(facts.width, facts.height), 1)
    if aspect > MAX_ASPECT:
        found.append(("extreme_aspect", f"{size}: aspect ratio {aspect:.1f}:1, the centre crop keeps 1/{aspect:.1f}"))
    if facts.orientation not in (0, 1):
        found.append(("exif_rotated", f"EXIF orientation {facts.orientation}: turned upright when read"))
    return found


def _inspect(path: Path) -> ImageFacts | str:
    try:
        return inspect_image(path)
    except DataError as e:
        return getattr(e, "reason", None) or str(e)


def check_files(
    root: Path,
    files: Iterable[tuple[Path, str, str]],
    not_images: Iterable[tuple[Path, str, str]] = (),
    *,
    progress: bool = True,
) -> FilePass:
    """Decode each (file, split, class name) in full; every problem found is a FileFinding. `not_images` are files
    without an image extension found among the images (listed, never opened)."""
    files = list(files)
    findings = [
        FileFinding(p.relative_to(root).as_posix(), split, label, "not_an_image", "no image extension: ignored")
        for p, split, label in not_images
    ]
    hashes: dict[str, str | None] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        results = pool.map(_inspect, [p for p, _, _ in files])
        bar = tqdm(results, total=len(files), desc="checking files", unit="file", disable=not progress, leave=False)
        for (path, split, label), facts in zip(files, bar, strict=True):
            rel = path.relative_to(root).as_posix()
            if isinstance(facts, str):
                findings.append(FileFinding(rel, split, label, "unreadable", facts))
                hashes[rel] = None
                continue
            hashes[rel] = facts.pixel_hash
            findings += [FileFinding(rel, split, label, problem, detail) for problem, detail in _problems(facts)]
    return FilePass(findings, hashes, len(files))
