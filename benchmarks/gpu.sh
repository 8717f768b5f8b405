#!/usr/bin/env bash
# CUDA readiness on one GPU (issue 28): the `cuda` tests (tests/test_cuda.py), then the training throughput of
# `resnetkit train --device cuda` (ResNet-50 at 224 px on the embedded CIFAR-10 sample) in fp32, bf16 and fp16
# autocast, then the evaluation loop on the GPU (engine.loop.evaluate over a BatchLoader on cuda: eager model, and
# the fast path with BatchNorm folded). `resnetkit bench` has no --device (it measures the CPU), hence these runs.
# One line per number; every step runs under `timeout`, inside one budget: the whole script ends within 8 minutes.
# Usage: bash benchmarks/gpu.sh   (from any folder; it runs in the repository root)
# Exit: 0 all ran and passed; 1 a step failed or ran out of time; 3 no CUDA device on this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3

START=$SECONDS
BUDGET_S=460 # 8 minutes, less the CUDA check and the last step's `timeout --kill-after` grace
failed=0

cuda=$("$PY" -W ignore -c 'import torch; print(torch.cuda.is_available())')
if [[ $cuda != True ]]; then
  echo "gpu.sh: no CUDA device (torch.cuda.is_available() is False on this machine); nothing to run" >&2
  exit 3
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_sh.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

# step NAME CAP_S LOG CMD...: CMD under `timeout` for CAP_S seconds, or what is left of the budget if less; its output
# goes to the file LOG ("-": the terminal). A failure or a timeout is one line (and LOG's tail); the script goes on.
step() {
  local name=$1 cap=$2 log=$3 rc=0
  shift 3
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 10)); then
    echo "gpu.sh: $name: not run, the 8-minute budget is spent" >&2
    failed=1
    return 0
  fi
  ((cap <= left)) || cap=$left
  if [[ $log == - ]]; then
    timeout --kill-after=10 "$cap" "$@" || rc=$?
  else
    timeout --kill-after=10 "$cap" "$@" >"$log" 2>&1 || rc=$?
  fi
  if ((rc == 124 || rc == 137)); then
    echo "gpu.sh: $name: stopped after $cap s (timeout)" >&2
  elif ((rc != 0)); then
    echo "gpu.sh: $name: failed (exit $rc)" >&2
  fi
  if ((rc != 0)); then
    failed=1
    [[ $log == - ]] || tail -n 5 "$log" >&2
  fi
  return 0
}

step "pytest -m cuda" 270 - "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py

# 2 epochs of the 2,000 sample images (15 steps each); epoch 2's rate is the one reported (epoch 1 warms cuDNN up)
TRAIN=(-q train --device cuda --model resnet50 --img-size 224 --data sample --batch-size 128 --epochs 2)
TRAIN+=(--test-subset 250 --no-compile --no-progress)
for precision in fp32 bf16 fp16; do
  case $precision in
  fp32) flags=(--no-amp) ;;
  bf16) flags=(--amp --amp-dtype bfloat16) ;;
  fp16) flags=(--amp --amp-dtype float16) ;;
  esac
  step "train $precision" 60 "$OUT/train_$precision.log" \
    "$PY" -m resnetkit "${TRAIN[@]}" "${flags[@]}" --out "$OUT/train_$precision"
done
"$PY" - "$OUT" <<'EOF' || failed=1
import json
import sys
from pathlib import Path

fp32 = None
for precision in ("fp32", "bf16", "fp16"):
    metrics = Path(sys.argv[1]) / f"train_{precision}" / "metrics.jsonl"
    if not metrics.exists():
        continue
    row = json.loads(metrics.read_text().splitlines()[-1])
    rate, wait = row["train_images_per_s"], row["data_wait_share"]
    fp32 = rate if precision == "fp32" else fp32
    versus = f"{rate / fp32:.2f}x fp32; " if fp32 and precision != "fp32" else ""
    print(f"train resnet50 224px {precision}: {rate:.0f} img/s ({versus}epoch {row['epoch']}, "
          f"{100 * wait:.0f}% of it waiting for input)")
EOF

step "eval" 50 - "$PY" - <<'EOF'
import time

import torch
import torch.nn.functional as F

from resnetkit.data.cifar import load_sample
from resnetkit.data.datasets import ImageTensorDataset
from resnetkit.data.loader import BatchLoader
from resnetkit.engine.fastpath import speed_up_for_inference
from resnetkit.engine.loop import evaluate
from resnetkit.models import create_model
from resnetkit.transforms import preprocessing_for

torch.manual_seed(0)
model = create_model("resnet50", num_classes=10).eval().cuda()
pre = preprocessing_for(model.default_cfg, "imagenet", 224)  # stored at 256, center crop 224
sample = load_sample("train")
stored = F.interpolate(sample.images[:1000].float(), size=pre.storage_size, mode="bilinear", antialias=True)
data = ImageTensorDataset(stored.round().clamp(0, 255).to(torch.uint8), sample.labels[:1000], sample.classes)
loader = BatchLoader(data, pre, batch_size=250, train=False, device="cuda")


def rate(net: torch.nn.Module, passes: int = 3) -> float:
    evaluate(net, loader, 10)  # warm-up: cuDNN's kernels chosen, the allocator filled
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(passes):
        evaluate(net, loader, 10)
    torch.cuda.synchronize()
    return passes * len(data) / (time.perf_counter() - t0)


eager = rate(model)
print(f"eval resnet50 224px fp32: {eager:.0f} img/s (engine.loop.evaluate, BatchLoader on cuda, eager model)")
fast = rate(speed_up_for_inference(model, compile=False))
print(f"eval resnet50 224px fp32 fast path: {fast:.0f} img/s ({fast / eager:.2f}x eager; BatchNorm folded, "
      "channels_last, not compiled)")
EOF

echo "gpu.sh: done in $((SECONDS - START)) s" >&2
exit "$failed"
