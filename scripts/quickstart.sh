#!/usr/bin/env bash
# Set up .venv, then train Faster R-CNN MobileNetV3-320 from scratch on the bundled BCCD sample,
# evaluate it on the sample's test split, export it to ONNX + OpenVINO IR and quantize the IR to INT8
# (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data=samples/bccd-mini/data.yaml
.venv/bin/otxlite train fasterrcnn_mobilenet_v3_large_320_fpn --data $data \
  --output runs/quickstart --no-pretrained params --learning_parameters.num_iters 8
.venv/bin/otxlite eval --load-weights runs/quickstart/weights.pth --data $data --output runs/quickstart/eval
.venv/bin/otxlite export --load-weights runs/quickstart/weights.pth --output runs/quickstart/export
.venv/bin/otxlite optimize --load-weights runs/quickstart/export/openvino.xml --data $data \
  --output runs/quickstart/optimize
