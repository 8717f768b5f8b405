#!/usr/bin/env bash
# Every measurement of benchmarks/RESULTS.md, in order, on a quiet machine. Usage: bash benchmarks/run_all.sh [DATA]
set -euo pipefail
data=${1:-../shared/data/cifar-10-batches-bin}
rk() { echo "\$ resnetkit $*"; resnetkit -q "$@" | tail -n 1; }
lscpu | grep -E "Model name|^CPU\(s\)" ; python -c "import torch; print('torch', torch.__version__)"
rk bench train --data-dir "$data" --steps 60
rk bench train --data-dir "$data" --steps 60 --no-compile
rk bench infer --model resnet20 --batch-size 250
rk bench infer --model resnet56 --batch-size 250
rk bench infer --model resnet50 --batch-size 8
rk bench infer --model resnet50 --batch-size 1
# session 3: the whole CIFAR-10 test-set evaluation end to end (a trained checkpoint: runs/c10_91_seed0), bf16
rk bench eval --data-dir "$data" --checkpoint runs/c10_91_seed0 --no-compile
rk bench eval --data-dir "$data" --checkpoint runs/c10_91_seed0 --compile
rk bench eval --data-dir "$data" --model resnet56 --no-compile
rk bench train --data-dir "$data" --steps 60 --amp
