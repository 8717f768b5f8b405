#!/usr/bin/env bash
# Issue 16's deployment numbers (benchmarks/RESULTS.md "Deploy", the README's deploy table), on a quiet machine:
# every form of each model (registered checkpoint on resnetkit's fast path, ONNX fp32, ONNX int8) against the
# standard eager fp32 PyTorch model, each measurement in its own process; top-1 on all 10,000 CIFAR-10 test images.
# Usage: bash benchmarks/deploy.sh [CIFAR_DIR] [CATS_VS_DOGS_DIR] > deploy.jsonl; python benchmarks/deploy_table.py deploy.jsonl
set -euo pipefail
c10=${1:-../shared/data/cifar-10-batches-bin}
cvd=${2:-../shared/data/cats_vs_dogs}
out=${OUT:-runs/deploy}
mkdir -p "$out"
rk() { echo "\$ resnetkit $*" >&2; resnetkit -q "$@" | tail -n 1; }
lscpu | grep -E "Model name|^CPU\(s\)" >&2
grep -o -w -E "avx512_vnni|avx_vnni|amx_int8|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' ' >&2; echo >&2
for m in ${MODELS:-resnet20 resnet56}; do
  rk export --checkpoint "$m.rk_cifar10" --format onnx --out "$out/$m.onnx" >&2
  rk export --checkpoint "$m.rk_cifar10" --format onnx --int8 --data cifar10 --data-dir "$c10" \
    --out "$out/$m.int8.onnx" >&2
  for c in "$m.rk_cifar10" "$out/$m.onnx" "$out/$m.int8.onnx"; do
    rk bench eval --data-dir "$c10" --checkpoint "$c"
    rk bench infer --checkpoint "$c" --batch-size 250
  done
done
# ResNet-50 at 224 px, speed only (random weights; int8 calibrated on 512 real cats-vs-dogs photos)
rk export --model resnet50 --format onnx --out "$out/resnet50.onnx" >&2
rk export --model resnet50 --format onnx --int8 --data folder --data-dir "$cvd" --out "$out/resnet50.int8.onnx" >&2
for c in "$out/resnet50.onnx" "$out/resnet50.int8.onnx"; do
  rk bench infer --checkpoint "$c" --batch-size 8
done
rk bench infer --model resnet50 --batch-size 8
rk bench infer --model resnet50 --batch-size 1
