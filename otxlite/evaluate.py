"""`otxlite eval`: COCO mAP, a per-class AP table and F1 at a tuned or fixed confidence threshold."""

import contextlib
import copy
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from otxlite.data import load_split, make_loader, require_splits
from otxlite.files import label_names, write_atomic, write_json
from otxlite.formats.base import decode_image
from otxlite.metrics import THRESHOLD_GRID, detection_metrics
from otxlite.predictors import load_predictor, predict
from otxlite.report import format_table, plot_f1, plot_precision_recall
from otxlite.templates import apply_overrides
from otxlite.visualize import gallery

log = logging.getLogger("otxlite")


def evaluate(model_path, specs, output=None, save_performance=None, overrides=None, device="auto"):
    """Evaluate a model file on the test split; returns the performance dict.

    output (optional) receives performance.json, f1_curve.png, precision_recall.png and gallery.jpg;
    save_performance writes performance.json elsewhere too.
    """
    predictor = load_predictor(model_path, device)
    postprocessing = thresholding(predictor, overrides or {})
    require_splits(specs, "test")
    split = load_split(specs["test"], known_classes=label_names(predictor.schema))
    params = predictor.template["hyper_parameters"]["learning_parameters"]
    log.info("Evaluating %s on %d test images", model_path, len(split.samples))
    predictions = predict(predictor, make_loader(split.samples, predictor.schema, params, predictor.device))
    fixed = None if postprocessing["result_based_confidence_threshold"] else postprocessing["confidence_threshold"]
    performance, result = score(split.samples, predictions, predictor.schema, fixed)
    log.info("%s", performance_report(performance, result, tuned=fixed is None))
    for path in filter(None, [save_performance, output and Path(output) / "performance.json"]):
        write_json(path, performance)
        log.info("Wrote %s", path)
    if output:
        save_plots(result, predictor.schema, Path(output))
        save_gallery(split.samples, predictions, predictor.schema, performance["confidence_threshold"],
                     Path(output) / "gallery.jpg")
    return performance


def thresholding(predictor, overrides):
    """The postprocessing settings: the model's own threshold, re-tuned on the results, unless params say otherwise."""
    template = copy.deepcopy(predictor.template)
    template["hyper_parameters"]["postprocessing"] = {"confidence_threshold": predictor.confidence_threshold,
                                                      "result_based_confidence_threshold": True}
    return apply_overrides(template, overrides)["hyper_parameters"]["postprocessing"]


def score(samples, predictions, schema, confidence_threshold=None):
    """(performance dict for performance.json, full metrics with curves) of predictions on samples.

    mAP figures use every detection; F1 uses detections scoring above the threshold, which is
    tuned on these results when confidence_threshold is None.
    """
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    ground_truths = [{"boxes": np.asarray(s.boxes, dtype=np.float64).reshape(-1, 4),
                      "labels": np.array([ids[c] for c in s.classes]), "ignored": np.array(s.ignored, bool)}
                     for s in samples]
    result = detection_metrics(ground_truths, predictions, list(ids.values()), confidence_threshold)
    names = {label["id"]: label["name"] for label in schema["labels"]}
    performance = {
        "f-measure": result["f_measure"],
        "confidence_threshold": result["confidence_threshold"],
        **coco_map(samples, predictions, schema),
        "per_class": {names[i]: {k: none_if_nan(c[k]) for k in ("gts", "dets", "recall", "ap")}
                      for i, c in result["per_class"].items()},
    }
    return performance, result


def none_if_nan(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def performance_report(performance, result, tuned):
    """The per-class table, the headline figures, and which threshold each one uses."""
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    rows = [(name, c["gts"], c["dets"], cell(c["recall"]), cell(c["ap"])) for name, c in performance["per_class"].items()]
    table = format_table(("class", "gts", "dets", "recall", "ap"), rows, [("mAP", "", "", "", f"{result['map']:.3f}")])
    how = "tuned on these results" if tuned else "fixed"
    return (f"\n{table}\n"
            f"mAP@0.5 {performance['map_50']:.3f}  mAP@[.5:.95] {performance['map_50_95']:.3f}  "
            f"F1 {performance['f-measure']:.3f} at confidence threshold {performance['confidence_threshold']:g}\n"
            f"mAP and the table use all detections the model returns; F1 uses detections scoring above "
            f"{performance['confidence_threshold']:g} ({how}).")


def save_plots(result, schema, folder):
    plot_f1(THRESHOLD_GRID, result["f1_curve"], result["confidence_threshold"], folder / "f1_curve.png")
    curves = {label["name"]: (c["recall_curve"], c["precision_curve"], c["ap"], label["color"])
              for label, c in zip(schema["labels"], result["per_class"].values()) if c["gts"]}
    plot_precision_recall(curves, folder / "precision_recall.png")


def save_gallery(samples, predictions, schema, threshold, path, count=6):
    """The first test images with ground truth and predictions above threshold drawn, as one JPEG grid."""
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    images = [Image.fromarray(decode_image(sample.image)) for sample in samples[:count]]
    truths = [{"boxes": s.boxes, "labels": [ids[c] for c in s.classes]} for s in samples[:count]]
    sheet = gallery(images, predictions[:count], truths, schema, threshold)
    write_atomic(path, lambda f: sheet.save(f, format="JPEG", quality=90))
    log.info("Wrote %s", path)


def coco_ground_truth(samples, schema):
    """A pycocotools COCO object holding the samples' boxes, image ids being sample positions.

    Ignored regions (COCO crowd, VOC difficult) are crowd regions to pycocotools.
    """
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    annotations = []
    for image_id, sample in enumerate(samples):
        for (x1, y1, x2, y2), name, ignored in zip(sample.boxes, sample.classes, sample.ignored):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(ignored)})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(samples)],
                    "annotations": annotations,
                    "categories": [{"id": label["id"], "name": label["name"]} for label in schema["labels"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(samples, predictions, schema):
    """{'map_50', 'map_50_95'} over all detections, by pycocotools."""
    rows = [[image_id, *box[:2], *(box[2:] - box[:2]), score, label]
            for image_id, p in enumerate(predictions)
            for box, score, label in zip(p["boxes"], p["scores"], p["labels"])]
    if not rows:
        return {"map_50": 0.0, "map_50_95": 0.0}
    ground_truth = coco_ground_truth(samples, schema)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(np.array(rows, dtype=np.float64))
        evaluator = COCOeval(ground_truth, detections, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map_50": max(float(evaluator.stats[1]), 0.0), "map_50_95": max(float(evaluator.stats[0]), 0.0)}
