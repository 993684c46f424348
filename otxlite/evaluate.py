"""Evaluation: run a detector over a split and score its detections with COCO mAP."""

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@torch.inference_mode()
def predict_batches(model, loader, device):
    """Detections per image ({'boxes', 'scores', 'labels'} as numpy, in image pixels), in loader order."""
    model.eval()
    predictions = []
    for images, _ in loader:
        images = [image.to(device, non_blocking=True).float().div_(255) for image in images]
        for output in model(images):
            predictions.append({k: output[k].float().cpu().numpy() for k in ("boxes", "scores", "labels")})
    return predictions


def coco_ground_truth(samples, schema):
    """A pycocotools COCO object holding the samples' boxes, image ids being sample positions."""
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    annotations = []
    for image_id, sample in enumerate(samples):
        for (x1, y1, x2, y2), name in zip(sample.boxes, sample.classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(samples)],
                    "annotations": annotations,
                    "categories": [{"id": label["id"], "name": label["name"]} for label in schema["labels"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(samples, predictions, schema):
    """{'map_50_95', 'map_50'} over all detections, by pycocotools."""
    rows = [[image_id, *box[:2], *(box[2:] - box[:2]), score, label]
            for image_id, p in enumerate(predictions)
            for box, score, label in zip(p["boxes"], p["scores"], p["labels"])]
    if not rows:
        return {"map_50_95": 0.0, "map_50": 0.0}
    ground_truth = coco_ground_truth(samples, schema)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(np.array(rows, dtype=np.float64))
        evaluator = COCOeval(ground_truth, detections, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map_50_95": max(float(evaluator.stats[0]), 0.0), "map_50": max(float(evaluator.stats[1]), 0.0)}
