"""Issue 19: a streamed training run's memory does not grow with the folder. Writes two folders of JPEGs made from
the cats-vs-dogs photos (seeded random crops, re-encoded), 2,000 and 20,000 training images, then runs the same
short streamed `resnetkit train` on each, `--repeats` times alternating, and reports the peak resident memory of the
whole process tree (the training process and its DataLoader workers, summed, sampled every 50 ms) of each run and
the median per size. (Repeats: a run's peak varies by ~100-300 MB with where malloc's kept free memory lands.)

    python benchmarks/stream_memory.py --source ../shared/data/cats_vs_dogs --out runs/stream_memory
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image


def make_folder(source: Path, out: Path, n_train: int, n_val: int = 200, seed: int = 0) -> Path:
    """out/train/{cat,dog}/ and out/val/{cat,dog}/: random crops (40-100% of each side) of the source photos."""
    if (out / "done").exists():
        return out
    rng = random.Random(seed)
    photos = {c: sorted((source / "train" / c).glob("*.jpg")) for c in ("cat", "dog")}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = ("cat", "dog")[i % 2]
            with Image.open(rng.choice(photos[c])) as im:
                w, h = im.size
                cw, ch = int(w * rng.uniform(0.4, 1)), int(h * rng.uniform(0.4, 1))
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                folder = out / split / c
                folder.mkdir(parents=True, exist_ok=True)
                im.convert("RGB").crop((x, y, x + cw, y + ch)).save(folder / f"{i:06d}.jpg", quality=85)
    (out / "done").write_text("")
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (Linux /proc), MB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def peak_rss(cmd: list[str]) -> tuple[float, float, int]:
    """(peak tree RSS MB, seconds, exit code) of `cmd`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        print(proc.stderr.read()[-2000:], file=sys.stderr)
    return peak, time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", default="runs/stream_memory")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per size; the median peak is reported")
    args = ap.parse_args()
    out = Path(args.out)
    folders = {n: make_folder(Path(args.source), out / f"folder_{n}", n) for n in args.sizes}
    peaks: dict[int, list[float]] = {n: [] for n in args.sizes}
    for r in range(args.repeats):  # alternating: a slow drift of the machine touches every size alike
        for n, folder in folders.items():
            cmd = [sys.executable, "-m", "resnetkit", "-q", "train", "--model", "resnet18", "--data", "folder",
                   "--data-dir", str(folder), "--data-mode", "stream", "--img-size", str(args.img_size), "--epochs",
                   "1", "--max-steps", str(args.steps), "--batch-size", "32", "--workers", str(args.workers),
                   "--no-progress", "--out", str(out / f"run_{n}_{os.getpid()}_{r}")]  # fmt: skip
            peak, seconds, code = peak_rss(cmd)
            if code:
                raise SystemExit(f"the run on {n} images failed (exit {code})")
            peaks[n].append(round(peak, 1))
            print(json.dumps({"train_images": n, "round": r, "peak_rss_mb": peaks[n][-1], "seconds": round(seconds, 1),
                              "steps": args.steps, "img_size": args.img_size, "workers": args.workers}))  # fmt: skip
    print(json.dumps({"median_peak_rss_mb": {n: statistics.median(p) for n, p in peaks.items()}}))


if __name__ == "__main__":
    main()
