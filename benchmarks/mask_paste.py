"""Where to paste Mask R-CNN's masks, measured: inside the exported graph (torchvision's traced per-detection
Loop writes each 28x28 mask into a full-size image) or after it (the graph returns the 28x28 masks, and the
predictor pastes them with torchvision's eager code, as otxlite exports them), on OpenVINO's CPU plugin in f32.

Usage: python benchmarks/mask_paste.py WEIGHTS.pth IMAGE_FOLDER [--images 10] [--runs 5] [--output DIR]

Per image: the median milliseconds over --runs of the model alone and of the whole predictor call (model, pasting,
thresholding, RLE encoding of every detection, as eval needs), and the deploy runner's numpy pasting of the
detections above the model's confidence threshold. Also checks that both designs give the same masks (mask IoU
of every detection scoring >= 0.5). Run it alone: the figures are only true when nothing else runs.
"""

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
import openvino
from pycocotools import mask as coco_mask
from torchvision.models.detection.roi_heads import paste_masks_in_image

from otxlite.core.tasks import as_detections
from otxlite.data.formats.base import decode_image
from otxlite.export.deploy_runner import paste_mask
from otxlite.export.exporter import export
from otxlite.inference.backends import exported_input, load_predictor


def median_ms(call, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--images", dest="count", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("/tmp/mask-paste"))
    args = parser.parse_args()

    per_box = export(args.weights, args.output / "per-box", formats=("openvino",))[0]
    with mock.patch("otxlite.export.exporter.masks_per_box", paste_masks_in_image):  # torchvision's paste, traced
        in_graph = export(args.weights, args.output / "in-graph", formats=("openvino",))[0]
    predictor = load_predictor(per_box, "cpu")
    core = openvino.Core()
    compiled = {name: core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                for name, xml in (("in graph", in_graph), ("per box", per_box))}
    outputs = predictor.outputs
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.count]
    figures = {name: {"model": [], "predictor": []} for name in compiled}
    deploy_ms, ious, detections, kept = [], [], 0, 0
    for path in files:
        image = decode_image(path)
        tensor = exported_input(image)
        found = {}
        for name, model in compiled.items():
            size = image.shape[:2] if name == "per box" else None
            run = lambda: list(model([tensor]).values())  # noqa: E731  (outputs in the model's order)
            figures[name]["model"].append(median_ms(run, args.runs))
            figures[name]["predictor"].append(median_ms(lambda: as_detections(dict(zip(outputs, run())), size),
                                                        args.runs))
            found[name] = as_detections(dict(zip(outputs, run())), size)
        boxes, scores, _, masks = (np.asarray(value) for value in compiled["per box"]([tensor]).values())
        above = np.flatnonzero(scores.reshape(-1) > predictor.confidence_threshold)
        deploy_ms.append(median_ms(lambda: [paste_mask(masks[i, 0], boxes[i], *image.shape[:2]) for i in above],
                                   args.runs))
        detections, kept = detections + len(scores.reshape(-1)), kept + len(above)
        graph, box = found["in graph"], found["per box"]
        for i in np.flatnonzero(box["scores"] >= 0.5):
            partner = np.argmin(np.abs(graph["boxes"] - box["boxes"][i]).max(axis=1))
            ious.append(coco_mask.iou([box["rles"][i]], [graph["rles"][partner]], [0])[0, 0])
    print(f"{len(files)} images from {args.images}, {detections / len(files):.0f} detections an image, "
          f"{kept / len(files):.1f} above the confidence threshold {predictor.confidence_threshold:g}")
    for name, times in figures.items():
        print(f"masks pasted {name:<9} model {statistics.median(times['model']):8.1f} ms   "
              f"predictor (all detections pasted, RLE) {statistics.median(times['predictor']):8.1f} ms")
    print(f"deploy runner's numpy pasting of the detections above the threshold: {statistics.median(deploy_ms):.1f} ms")
    print(f"mask IoU between the designs, {len(ious)} detections scoring >= 0.5: min {min(ious, default=1):.4f}, "
          f"mean {np.mean(ious) if ious else 1:.4f}")


if __name__ == "__main__":
    main()
