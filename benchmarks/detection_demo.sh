#!/usr/bin/env bash
# Issue 20's detection demo (docs/figures/detect_cats_vs_dogs.png, benchmarks/RESULTS.md "Detection"): a COCO-format
# set of 96 training / 24 validation canvases with cats-vs-dogs TRAINING photos pasted in (tests/
# test_detection_train.py's write_coco), a Faster R-CNN on ResNet-18 trained from random weights, then `detect` on a
# canvas made from two VALIDATION photos. Usage: bash benchmarks/detection_demo.sh [OUT]
set -euo pipefail
out=${1:-runs/detection_demo}
lscpu | grep -E "Model name|^CPU\(s\)" >&2
python - "$out" <<'PY'
import random, sys
from pathlib import Path
from PIL import Image, ImageFilter
sys.path.insert(0, "tests")
from test_detection_train import write_coco
out = Path(sys.argv[1])
if not (out / "coco").exists():
    write_coco(out / "coco", {"train": 96, "val": 24}, layout="coco")
val = Path("../shared/data/cats_vs_dogs/val")  # photos no training canvas was made from
canvas = Image.effect_noise((384, 384), 50).convert("RGB").filter(ImageFilter.GaussianBlur(4))
canvas = Image.blend(canvas, Image.new("RGB", canvas.size, (120, 150, 110)), 0.5)
for photo, xy, side in ((sorted((val / "cat").glob("*.jpg"))[5], (20, 30), 170),
                        (sorted((val / "dog").glob("*.jpg"))[7], (205, 190), 165)):
    with Image.open(photo) as p:
        canvas.paste(p.convert("RGB").resize((side, side)), xy)
canvas.save(out / "canvas.jpg", quality=92)
PY
kwargs='{"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
 "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "rpn_batch_size_per_image": 64}'
[ -f "$out/run/checkpoints/last.pt" ] || resnetkit train --task detection --data coco --data-dir "$out/coco" \
  --model resnet18 --detector fasterrcnn --img-size 128 --batch-size 8 --lr 0.02 --epochs 12 --threads 1 \
  --set "model_kwargs=$kwargs" --set warmup_steps=12 --set grad_clip=10.0 --out "$out/run"
resnetkit detect --checkpoint "$out/run" "$out/canvas.jpg" --score 0.5 --out "$out/overlays"
