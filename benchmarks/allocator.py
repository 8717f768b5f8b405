"""What `resnetkit.hardware.keep_freed_memory` (glibc malloc keeps freed tensor memory; every resnetkit command sets
it) is worth: the same work in fresh Python processes with and without it, alternating, the median of `--rounds`.

    python benchmarks/allocator.py [--rounds 3]

Measured: a 64 x 3 x 224 x 224 uint8 batch normalised to float32 channels_last (the streamed input's main-process
step), and CPU training steps (bf16 autocast, channels_last, SGD) of ResNet-20 at 32 px (batch 128) and ResNet-18
at 224 px (batch 32). Run it with the machine to itself: the numbers are rates."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORK = """
import json, sys, time, torch
from resnetkit.hardware import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
from resnetkit.models import create_model
from resnetkit.transforms import Preprocessing
torch.manual_seed(0)
out = {"kept": kept}
pre = Preprocessing("imagenet", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
batch = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
for _ in range(3):
    pre.normalize(batch)
start = time.perf_counter()
for _ in range(20):
    pre.normalize(batch)
out["normalize_224"] = 20 * 64 / (time.perf_counter() - start)
for name, shape, steps in (("resnet20", (128, 3, 32, 32), 20), ("resnet18", (32, 3, 224, 224), 5)):
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (shape[0],))
    def step():
        with torch.autocast("cpu", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    out[f"train_{name}"] = steps * shape[0] / (time.perf_counter() - start)
print(json.dumps(out))
"""


def _once(mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", WORK, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    runs: dict[str, list[dict[str, float]]] = {"default": [], "kept": []}
    for _ in range(rounds):
        for mode in runs:
            runs[mode].append(_once(mode))
    assert all(r["kept"] for r in runs["kept"]), "keep_freed_memory was not applied (not glibc, or MALLOC_* set)"
    print(f"{'images/s (median of ' + str(rounds) + ')':32s} {'glibc default':>14s} {'kept':>10s} {'ratio':>7s}")
    for key in ("normalize_224", "train_resnet20", "train_resnet18"):
        base, kept = (statistics.median(r[key] for r in runs[m]) for m in ("default", "kept"))
        print(f"{key:32s} {base:14.1f} {kept:10.1f} {kept / base:6.2f}x")


if __name__ == "__main__":
    main()
