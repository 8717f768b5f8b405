"""Test top-1 against wall-clock minutes for finished runs (benchmarks/RESULTS.md, goal 3): one line per run.

Each run's `metrics.jsonl` gives the per-epoch training time and test top-1; the time between epochs (the
per-epoch evaluation, checkpoints) is spread over the epochs in proportion, so each line ends at the wall time
`resnetkit train` reported (`--minutes`, one per run, in order).

    python benchmarks/plot_time_to_accuracy.py --out benchmarks/figures/X.png \\
        --run runs/a "fp32, seed 0" 29.3 --run runs/b "bf16, seed 0" 19.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=3, action="append", metavar=("RUN", "LABEL", "MINUTES"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="ResNet-20 on CIFAR-10: test top-1 against training time")
    parser.add_argument("--target", type=float, default=91.25, help="a horizontal line (the paper's top-1)")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run, label, minutes in args.run:
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r["train_time_s"] for r in rows]
        scale = float(minutes) * 60 / sum(train)
        elapsed, xs = 0.0, []
        for t in train:
            elapsed += t * scale
            xs.append(elapsed / 60)
        ax.plot(xs, [100 * r["test_top1"] for r in rows], label=f"{label} ({float(minutes):.1f} min)")
    ax.axhline(args.target, color="grey", linestyle=":", label=f"{args.target}% (the paper)")
    ax.set(xlabel="wall-clock minutes", ylabel="test top-1 (%), single view", title=args.title, ylim=(80, 93))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
