#!/usr/bin/env bash
# Set up .venv, then the whole chain on the bundled BCCD blood-cell dataset (samples/bccd, MIT licence): train the
# fast CPU template (fasterrcnn_efficientnet_lite0_320_fpn, from the ImageNet weights that installed with it, no
# network needed) with its own recipe, evaluate it on the test split, export it to ONNX + OpenVINO IR, quantize the
# IR to INT8, and draw the INT8 model's detections on test images. Without a template, `otxlite train --data`
# picks the 416 px one for the data: better, and four times as long.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
otxlite=.venv/bin/otxlite
data=samples/bccd/data.yaml
run=runs/quickstart
$otxlite train fasterrcnn_efficientnet_lite0_320_fpn --data $data --output $run
$otxlite eval --load-weights $run/weights.pth --data $data --output $run/eval
$otxlite export --load-weights $run/weights.pth --output $run/export
$otxlite optimize --load-weights $run/export/openvino.xml --data $data --output $run/optimize
mkdir -p $run/test-images
for id in $(head -n 8 samples/bccd/ImageSets/Main/test.txt); do cp samples/bccd/JPEGImages/$id.jpg $run/test-images/; done
$otxlite demo --load-weights $run/optimize/openvino.xml --input $run/test-images --output $run/demo
cat <<DONE

Done. Open $run/demo/ to see the INT8 model's detections on 8 test images
($run/eval/gallery.jpg sets them beside the ground truth; figures: $run/optimize/performance.json).
Other templates: $otxlite find --data $data (ranked for this data; rank 1 is the one train picks without a template).
DONE
