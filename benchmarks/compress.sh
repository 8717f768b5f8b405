#!/usr/bin/env bash
# Issue 18's table (README "Smaller ResNets", benchmarks/RESULTS.md "Compress"), on a quiet machine: int8 files of
# the unpruned, pruned, plain and distilled networks, then every model's MACs, parameters, size, top-1 on all 10,000
# CIFAR-10 test images and CPU images/s, all in one process (benchmarks/compress_table.py).
# Usage: bash benchmarks/compress.sh [CIFAR_DIR] [PRUNED_RUN] [RESNET20_RUN] [DISTILLED_RUN] > compress.txt
set -euo pipefail
c10=${1:-../shared/data/cifar-10-batches-bin}
pruned=${2:-runs/r56_pruned_l1}
plain=${3:-runs/c10_bf16_seed0}
kd=${4:-runs/r20_kd_seed0}
out=${OUT:-runs/compress}
mkdir -p "$out"
lscpu | grep -E "Model name|^CPU\(s\)" >&2
declare -A sources=([resnet56]=resnet56.rk_cifar10 [resnet56_pruned]=$pruned [resnet20]=$plain [resnet20_kd]=$kd)
for name in resnet56 resnet56_pruned resnet20 resnet20_kd; do
  [ -f "$out/$name.int8.onnx" ] && continue  # made earlier (calibration is not timed; delete to redo)
  resnetkit -q export --checkpoint "${sources[$name]}" --format onnx --int8 --data cifar10 --data-dir "$c10" \
    --out "$out/$name.int8.onnx" >&2
done
python benchmarks/compress_table.py --data-dir "$c10" resnet56.rk_cifar10 "$pruned" "$plain" "$kd" \
  "$out/resnet56.int8.onnx" "$out/resnet56_pruned.int8.onnx" "$out/resnet20.int8.onnx" "$out/resnet20_kd.int8.onnx"
