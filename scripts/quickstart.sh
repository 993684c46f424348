#!/usr/bin/env bash
# Set up .venv, then the whole chain on the bundled BCCD blood-cell dataset (samples/bccd, MIT licence):
# train SSDlite320 from random weights (8 epochs), evaluate it on the test split, export it to ONNX + OpenVINO IR,
# quantize the IR to INT8, and draw the INT8 model's detections on test images. About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
otxlite=.venv/bin/otxlite
data=samples/bccd/data.yaml
run=runs/quickstart
$otxlite train ssdlite320_mobilenet_v3_large --data $data --output $run --no-pretrained \
  params --learning_parameters.num_iters 8 --learning_parameters.learning_rate 0.05 \
  --learning_parameters.warmup_iters 13 --learning_parameters.enable_early_stopping false
$otxlite eval --load-weights $run/weights.pth --data $data --output $run/eval
$otxlite export --load-weights $run/weights.pth --output $run/export
$otxlite optimize --load-weights $run/export/openvino.xml --data $data --output $run/optimize
mkdir -p $run/test-images
for id in $(head -n 8 samples/bccd/ImageSets/Main/test.txt); do cp samples/bccd/JPEGImages/$id.jpg $run/test-images/; done
$otxlite demo --load-weights $run/optimize/openvino.xml --input $run/test-images --output $run/demo
cat <<DONE

Done. Open $run/demo/ to see the INT8 model's detections on 8 test images
($run/eval/gallery.jpg sets them beside the ground truth; figures: $run/optimize/performance.json).
With a network, fine-tune from torchvision's COCO weights instead of random ones (downloaded once):
  $otxlite train ssdlite320_mobilenet_v3_large --data $data --output runs/finetune params --learning_parameters.num_iters 20
DONE
