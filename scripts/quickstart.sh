#!/usr/bin/env bash
# Set up .venv, then train Faster R-CNN MobileNetV3-320 from scratch on the bundled BCCD sample
# and evaluate it on the sample's test split (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/otxlite train fasterrcnn_mobilenet_v3_large_320_fpn --data samples/bccd-mini/data.yaml \
  --output runs/quickstart --no-pretrained params --learning_parameters.num_iters 8
.venv/bin/otxlite eval --load-weights runs/quickstart/weights.pth --data samples/bccd-mini/data.yaml \
  --output runs/quickstart/eval
