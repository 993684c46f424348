"""How to merge tiled detections: otxlite's merge against SAHI's greedy NMM, on the same detections.

Usage: python benchmarks/tiling_merge.py WEIGHTS --data DATA_YAML [--min-score 0.3]

WEIGHTS is a weights.pth trained with tiling (benchmarks/tiling.py writes one: OUTPUT/tiling-true/weights.pth,
with OUTPUT/bccd-mosaic-2/data.yaml). Each test image and its tiles are predicted once; the same detections are
then merged each way and scored with `otxlite eval`'s figures (mAP, F1 at its tuned threshold):
- otxlite: a tile's detections cut by one of its inner edges dropped, the rest merged by class-wise NMS (IoU);
- NMS only: the same NMS without the edge rule;
- SAHI: sahi's GreedyNMMPostprocess as its sliced prediction does by default (intersection over the smaller
  box >= 0.5, class-wise; a match grows the kept box to hold both) and, second, with IoU as the metric.
--min-score drops the parts' detections under it before any merge (SAHI's models default to 0.3; otxlite keeps
every detection its predictor returns, as mAP wants).
Needs sahi, which otxlite does not depend on: `pip install sahi shapely opencv-python-headless`.
"""

import argparse
import time

import numpy as np
import torch
from sahi.postprocess.combine import GreedyNMMPostprocess
from sahi.prediction import ObjectPrediction
from torchvision.ops import batched_nms

from otxlite.core.labels import LabelSchema, label_names
from otxlite.core.report import format_table
from otxlite.data.formats.base import decode_image
from otxlite.data.records import load_split
from otxlite.data.specs import read_data_yaml
from otxlite.engine.evaluate import score
from otxlite.inference.backends import load_predictor
from otxlite.models.tiling import merged, windows


def shifted_parts(parts, windows_of_parts):
    """Every part's detections in image pixels, concatenated: boxes, scores, labels."""
    boxes = np.concatenate([p["boxes"] + np.array([x0, y0, x0, y0], np.float32)
                            for p, (x0, y0, _, _) in zip(parts, windows_of_parts)])
    return boxes, np.concatenate([p["scores"] for p in parts]), np.concatenate([p["labels"] for p in parts])


def nms_only(parts, windows_of_parts, image_size, iou_threshold):
    boxes, scores, labels = shifted_parts(parts, windows_of_parts)
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)),
                       torch.from_numpy(labels.astype(np.int64)), iou_threshold).numpy()
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def sahi_merge(metric):
    postprocess = GreedyNMMPostprocess(match_threshold=0.5, match_metric=metric, class_agnostic=False)

    def merge(parts, windows_of_parts, image_size, iou_threshold):
        boxes, scores, labels = shifted_parts(parts, windows_of_parts)
        objects = [ObjectPrediction(bbox=box.tolist(), category_id=int(label), category_name=str(label),
                                    score=float(score), full_shape=list(image_size))
                   for box, score, label in zip(boxes, scores, labels)]
        kept = sorted(postprocess(objects), key=lambda o: -o.score.value)
        return {"boxes": np.array([o.bbox.to_xyxy() for o in kept], np.float32).reshape(-1, 4),
                "scores": np.array([o.score.value for o in kept], np.float32),
                "labels": np.array([o.category.id for o in kept], np.int64)}
    return merge


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--data", required=True)
    parser.add_argument("--min-score", type=float, default=0.0)
    args = parser.parse_args()
    tiled = load_predictor(args.weights, "cpu")
    predictor, settings = tiled.predictor, tiled.settings
    samples = load_split(read_data_yaml(args.data)["test"], known_classes=label_names(predictor.schema)).samples
    cached = []
    for sample in samples:
        image = decode_image(sample.image)
        height, width = image.shape[:2]
        tiles = windows(height, width, settings)
        parts = [{key: part[key][part["scores"] >= args.min_score] for key in ("boxes", "scores", "labels")}
                 for part in predictor([image] + [image[y0:y1, x0:x1] for x0, y0, x1, y1 in tiles])]
        cached.append((parts, [(0, 0, width, height)] + tiles, (height, width)))
    names = LabelSchema.of(predictor.schema).name_of
    rows = []
    for name, merge in (("otxlite (inner-edge rule + NMS)", merged), ("NMS only", nms_only),
                        ("SAHI greedy NMM, IOS 0.5", sahi_merge("IOS")), ("SAHI greedy NMM, IoU 0.5", sahi_merge("IOU"))):
        started = time.perf_counter()
        predictions = [merge(parts, wins, size, settings["merge_iou"]) for parts, wins, size in cached]
        milliseconds = (time.perf_counter() - started) * 1000 / len(cached)
        performance, _ = score(samples, predictions, predictor.schema)
        per_class = "  ".join(f"{names[i]} {performance['per_class'][names[i]]['ap'] or 0:.3f}" for i in names)
        rows.append((name, f"{performance['map_50']:.3f}", f"{performance['map_50_95']:.3f}",
                     f"{performance['f-measure']:.3f} at {performance['confidence_threshold']:.2f}", per_class,
                     f"{np.mean([len(p['boxes']) for p in predictions]):.0f}", f"{milliseconds:.1f}"))
    print(format_table(("merge", "test mAP@0.5", "test mAP", "F1 (tuned threshold)", "AP@0.5 per class", "detections / image",
                        "merge ms / image"), rows))


if __name__ == "__main__":
    main()
