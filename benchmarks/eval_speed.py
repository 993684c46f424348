"""Time otxlite's metrics on synthetic results: 5,000 images, 100 detections each.

Usage: python benchmarks/eval_speed.py [--images 5000] [--detections 100]
Prints the seconds for matching + per-class AP + the F1 threshold search, and for pycocotools' mAP on the same data.
"""

import argparse
import time

import numpy as np

from otxlite.core.labels import LabelSchema
from otxlite.core.metrics import detection_metrics
from otxlite.data.formats import Sample
from otxlite.engine.evaluate import coco_map


def synthetic(images, detections, classes, seed=0):
    rng = np.random.default_rng(seed)
    ground_truths, predictions = [], []
    for _ in range(images):
        count = rng.integers(5, 30)
        corner = rng.uniform(0, 560, (count, 2))
        boxes = np.hstack([corner, corner + rng.uniform(10, 80, (count, 2))])
        labels = rng.integers(1, classes + 1, count)
        ground_truths.append({"boxes": boxes, "labels": labels})
        picked = rng.integers(0, count, detections)
        noisy = boxes[picked] + rng.normal(0, 4, (detections, 4))
        noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        predictions.append({"boxes": noisy, "scores": rng.uniform(0.05, 1, detections),
                            "labels": np.where(rng.random(detections) < 0.9, labels[picked],
                                               rng.integers(1, classes + 1, detections))})
    return ground_truths, predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    ground_truths, predictions = synthetic(args.images, args.detections, args.classes)

    started = time.perf_counter()
    result = detection_metrics(ground_truths, predictions, list(range(1, args.classes + 1)))
    ours = time.perf_counter() - started

    names = [f"class{i}" for i in range(1, args.classes + 1)]
    samples = [Sample(None, "", [list(b) for b in g["boxes"]], [names[i - 1] for i in g["labels"]], 640, 640)
               for g in ground_truths]
    started = time.perf_counter()
    reference = coco_map(samples, predictions, LabelSchema.of_classes(names))
    cocoeval = time.perf_counter() - started

    print(f"{args.images} images x {args.detections} detections, {args.classes} classes")
    print(f"otxlite metrics (matching, per-class AP, F1 over 39 thresholds): {ours:.2f} s"
          f"  (mAP@0.5 {result['map']:.4f}, F1 {result['f_measure']:.4f} at {result['confidence_threshold']:g})")
    print(f"pycocotools COCOeval, mAP@[.5:.95] and @0.5:                      {cocoeval:.2f} s"
          f"  (mAP@0.5 {reference['map_50']:.4f})")


if __name__ == "__main__":
    main()
