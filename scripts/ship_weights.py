"""Turn a finished run into weights shipped inside the package (src/resnetkit/weights/shipped/NAME.safetensors).

Writes the run's final model (`checkpoints/last.pt`: the last epoch, never a test-selected best) as a safetensors
state dict, then prints what its registry entry needs: the file's sha256 and `resnetkit eval`'s top-1 on the whole
CIFAR-10 test set, single view and with flip TTA, of those same weights (tests/test_pretrained.py then checks
the registered numbers against the shipped file itself).

    python scripts/ship_weights.py runs/c10_bf16_seed0 resnet20_rk_cifar10 [--data-dir ../shared/data/...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnetkit.checkpoint import load_checkpoint, model_from_checkpoint
from resnetkit.inference import evaluate_checkpoint
from resnetkit.weights.download import sha256_file
from resnetkit.weights.io import save_state_dict

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "resnetkit" / "weights" / "shipped"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("name", help="file stem, e.g. resnet20_rk_cifar10")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar-10-batches-bin"))
    args = parser.parse_args()
    ckpt = load_checkpoint(Path(args.run) / "checkpoints" / "last.pt")
    out = save_state_dict(model_from_checkpoint(ckpt).state_dict(), SHIPPED / f"{args.name}.safetensors")
    print(f"{out}: sha256 {sha256_file(out)}, {out.stat().st_size / 1e6:.2f} MB")
    print(json.dumps({"model": ckpt["model_name"], "config": ckpt["config"]}, default=str)[:400])
    for tta in (False, True):
        res = evaluate_checkpoint(args.run, "cifar10", args.data_dir, tta_flip=tta, progress=False, compile=False)
        print(f"{'flip TTA' if tta else 'single view'}: top1 {res['top1']:.4f} on {res['n']} images")


if __name__ == "__main__":
    main()
