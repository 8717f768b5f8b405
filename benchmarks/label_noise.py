"""Issue 31's label-noise benchmark: plant wrong labels in CIFAR-10, find them with `resnetkit audit --folds`, compare
with cleanlab's reference implementation of confident learning on the same out-of-sample probabilities, and train
with and without the flagged images.

    python benchmarks/label_noise.py noisy --cifar ../shared/data/cifar-10-batches-bin --out runs/noisy_cifar10
    resnetkit audit --data cifar10 --data-dir runs/noisy_cifar10 --folds 4 --config cifar10_fast_cpu \
        --out runs/audit_noisy
    python benchmarks/label_noise.py score --noisy runs/noisy_cifar10 --audit runs/audit_noisy \
        [--cleanlab-python /tmp/clenv/bin/python]

`noisy` copies the official binary files with 1,000 training labels (2%) flipped, seeded, each to one of the other
nine classes at random, and writes flips.csv (index, clean, noisy). No model that saw the clean labels takes part:
the audit's K fold models train on the noisy labels only. `score` prints precision and recall of the flagged set and
of the top 1,000 of the ranking, for resnetkit and (in a separate interpreter, since cleanlab is AGPL-3.0 and never a
resnetkit dependency: `python -m venv /tmp/clenv && /tmp/clenv/bin/pip install cleanlab`) cleanlab's
`find_label_issues` with its defaults on the very same probabilities.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]

CLEANLAB_SNIPPET = """
import json, sys
import numpy as np
from cleanlab.filter import find_label_issues
import cleanlab
data = np.load(sys.argv[1])
issues = find_label_issues(data["labels"], data["probs"], return_indices_ranked_by="self_confidence")
print(json.dumps({"version": cleanlab.__version__, "ranked": [int(i) for i in issues]}))
"""


def make_noisy(cifar: Path, out: Path, flips: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = np.concatenate([np.fromfile(cifar / f, dtype=np.uint8).reshape(-1, RECORD) for f in TRAIN_FILES])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(records), size=flips, replace=False))
    clean = records[chosen, 0].copy()
    noisy = (clean + rng.integers(1, 10, size=flips)) % 10  # one of the nine other classes, uniformly
    records[chosen, 0] = noisy
    for i, name in enumerate(TRAIN_FILES):
        records[i * 10000 : (i + 1) * 10000].tofile(out / name)
    for name in ("test_batch.bin", "batches.meta.txt"):
        shutil.copyfile(cifar / name, out / name)
    with open(out / "flips.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "clean", "noisy"])
        w.writerows(zip(chosen.tolist(), clean.tolist(), noisy.tolist(), strict=True))
    print(f"{out}: {flips} of {len(records)} training labels flipped (seed {seed}); flips.csv lists them")


def precision_recall(flagged: list[int], truth: set[int]) -> dict[str, float]:
    hits = len(set(flagged) & truth)
    return {
        "flagged": len(flagged),
        "true_positives": hits,
        "precision": hits / max(len(flagged), 1),
        "recall": hits / len(truth),
    }


def score(noisy: Path, audit: Path, cleanlab_python: str | None) -> dict:
    import torch

    truth = {int(r["index"]) for r in csv.DictReader(open(noisy / "flips.csv"))}
    rows = [r for r in csv.DictReader(open(audit / "label_issues.csv")) if r["split"] == "train"]
    ranked = [int(r["index"]) for r in sorted(rows, key=lambda r: int(r["rank"]))]
    result = {"planted": len(truth), "resnetkit": precision_recall(ranked, truth)}
    result["resnetkit_top_1000"] = precision_recall(ranked[: len(truth)], truth)
    saved = torch.load(audit / "probabilities" / "train.pt", weights_only=True)
    probs, labels = saved["probs"].numpy(), saved["labels"].numpy()
    by_confidence = np.argsort(probs[np.arange(len(labels)), labels], kind="stable")  # every image, flagged or not
    result["lowest_self_confidence_1000"] = precision_recall(by_confidence[: len(truth)].tolist(), truth)
    if cleanlab_python:
        npz = audit / "probabilities" / "train_for_cleanlab.npz"
        np.savez(npz, labels=labels, probs=probs)
        done = subprocess.run(
            [cleanlab_python, "-c", CLEANLAB_SNIPPET, str(npz)], capture_output=True, text=True, check=True
        )
        reference = json.loads(done.stdout.strip().splitlines()[-1])
        result["cleanlab_version"] = reference["version"]
        result["cleanlab"] = precision_recall(reference["ranked"], truth)
        result["cleanlab_top_1000"] = precision_recall(reference["ranked"][: len(truth)], truth)
        both = set(ranked) & set(reference["ranked"])
        result["agreement"] = {"both": len(both), "only_resnetkit": len(set(ranked) - both)}
        result["agreement"]["only_cleanlab"] = len(set(reference["ranked"]) - both)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("noisy", help="write CIFAR-10 with flipped training labels")
    p.add_argument("--cifar", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--flips", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="precision and recall of the audit (and of cleanlab)")
    s.add_argument("--noisy", type=Path, required=True)
    s.add_argument("--audit", type=Path, required=True)
    s.add_argument("--cleanlab-python", help="an interpreter with cleanlab installed (kept out of resnetkit's venv)")
    s.add_argument("--json", type=Path, help="append the result as one JSON line here")
    args = parser.parse_args()
    if args.command == "noisy":
        make_noisy(args.cifar, args.out, args.flips, args.seed)
        return
    result = score(args.noisy, args.audit, args.cleanlab_python)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
