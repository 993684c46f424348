"""`otxlite eval`: COCO mAP, a per-class AP table and F1 at a tuned or fixed confidence threshold."""

import contextlib
import copy
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from otxlite.core.errors import DataError
from otxlite.core.files import write_atomic, write_json
from otxlite.core.labels import LabelSchema, label_names
from otxlite.core.metrics import THRESHOLD_GRID, detection_metrics
from otxlite.core.report import format_table, plot_f1, plot_precision_recall
from otxlite.core.tasks import KEY_PREFIX, task_of
from otxlite.core.visualize import gallery
from otxlite.data.formats.base import decode_image
from otxlite.data.formats.shapes import Polygons
from otxlite.data.loader import make_loader
from otxlite.data.records import load_split
from otxlite.data.specs import require_splits
from otxlite.inference.backends import load_predictor, predict
from otxlite.models.templates import apply_overrides

log = logging.getLogger("otxlite")


def evaluate(model_path, specs, output=None, save_performance=None, overrides=None, device="auto"):
    """Evaluate a model file on the test split; returns the performance dict.

    output (optional) receives performance.json, f1_curve.png, precision_recall.png and gallery.jpg;
    save_performance writes performance.json elsewhere too.
    """
    predictor = load_predictor(model_path, device)
    postprocessing = thresholding(predictor, overrides or {})
    require_splits(specs, "test")
    task = task_of(predictor.schema)
    split = load_split(specs["test"], known_classes=label_names(predictor.schema), masks=None if task.masks else False)
    refuse_meaningless(split, specs["test"], task)
    params = predictor.template["hyper_parameters"]["learning_parameters"]
    log.info("Evaluating %s on %d test images", model_path, len(split.samples))
    predictions = predict(predictor, make_loader(split.samples, predictor.schema, params, predictor.device))
    fixed = None if postprocessing["result_based_confidence_threshold"] else postprocessing["confidence_threshold"]
    performance, result = score(split.samples, predictions, predictor.schema, fixed)
    log.info("%s", performance_report(performance, result, tuned=fixed is None, task=task_of(predictor.schema)))
    for path in filter(None, [save_performance, output and Path(output) / "performance.json"]):
        write_json(path, performance)
        log.info("Wrote %s", path)
    if output:
        save_plots(result, predictor.schema, Path(output))
        save_gallery(split.samples, predictions, predictor.schema, performance["confidence_threshold"],
                     Path(output) / "gallery.jpg")
    return performance


def refuse_meaningless(split, spec, task):
    """An error when the test split cannot give the figures meaning: no objects at all, or, for a mask model,
    objects without masks (their box would stand in for the mask)."""
    objects = [(record, shape) for s in split.samples
               for record, shape, ignored in zip(s.records, s.shapes, s.ignored) if not ignored]
    if not objects:
        raise DataError(f"{spec.ann_files}: the test split holds no objects, so mAP and F1 would mean nothing. "
                        f"Evaluate on annotated images (`otxlite data check` shows what each split holds).")
    unmasked = [record for record, shape in objects if shape is None]
    if task.masks and unmasked:
        raise DataError(f"{spec.ann_files}: {len(unmasked)} of {len(objects)} test objects have a box but no mask "
                        f"(first: {unmasked[0]}), so mask mAP would mean nothing. Evaluate this instance-segmentation "
                        f"model on annotations with masks (polygons, RLE or mask images).")


def thresholding(predictor, overrides):
    """The postprocessing settings: the model's own threshold, re-tuned on the results, unless params say otherwise."""
    template = copy.deepcopy(predictor.template)
    template["hyper_parameters"]["postprocessing"] = {"confidence_threshold": predictor.confidence_threshold,
                                                      "result_based_confidence_threshold": True}
    return apply_overrides(template, overrides)["hyper_parameters"]["postprocessing"]


def score(samples, predictions, schema, confidence_threshold=None):
    """(performance dict for performance.json, full metrics with curves) of predictions on samples.

    mAP figures use every detection; F1 uses detections scoring above the threshold, which is
    tuned on these results when confidence_threshold is None. The task's IoU (box or mask) matches
    predictions for the table and F1.
    """
    task = task_of(schema)
    ids = LabelSchema.of(schema).id_of
    ground_truths = [{"boxes": np.asarray(s.boxes, dtype=np.float64).reshape(-1, 4),
                      "labels": np.array([ids[c] for c in s.classes]), "ignored": np.array(s.ignored, bool),
                      **({"rles": sample_rles(s)} if task.masks else {})}
                     for s in samples]
    result = detection_metrics(ground_truths, predictions, list(ids.values()), confidence_threshold, task.overlaps)
    names = LabelSchema.of(schema).name_of
    performance = {
        "f-measure": result["f_measure"],
        "confidence_threshold": result["confidence_threshold"],
        **coco_map(samples, predictions, schema),
        "per_class": {names[i]: {k: none_if_nan(c[k]) for k in ("gts", "dets", "recall", "ap")}
                      for i, c in result["per_class"].items()},
    }
    return performance, result


def sample_rles(sample):
    """COCO RLEs of a sample's instances; an ignored region without a shape is its box."""
    shapes = [shape or Polygons([[x1, y1, x2, y1, x2, y2, x1, y2]])
              for shape, (x1, y1, x2, y2) in zip(sample.shapes, sample.boxes)]
    return [shape.rle(sample.width, sample.height) for shape in shapes]


def none_if_nan(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def headline_figures(figures, task, digits=4):
    """'mAP@0.5 x  mAP@[.5:.95] y' for each of the task's iou types, masks first ('mask mAP@0.5 ...  box ...')."""
    named = len(task.iou_types) > 1
    return "  ".join(f"{'mask ' if iou_type == 'segm' else 'box ' if named else ''}"
                     f"mAP@0.5 {figures[KEY_PREFIX[iou_type] + 'map_50']:.{digits}f}  "
                     f"mAP@[.5:.95] {figures[KEY_PREFIX[iou_type] + 'map_50_95']:.{digits}f}"
                     for iou_type in task.iou_types)


def performance_report(performance, result, tuned, task):
    """The per-class table (AP by the task's IoU), the headline figures, and which threshold each one uses."""
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    rows = [(name, c["gts"], c["dets"], cell(c["recall"]), cell(c["ap"])) for name, c in performance["per_class"].items()]
    ap = f"{task.unit}ap"
    table = format_table(("class", "gts", "dets", "recall", ap), rows, [("mAP", "", "", "", f"{result['map']:.3f}")])
    how = "tuned on these results" if tuned else "fixed"
    return (f"\n{table}\n"
            f"{headline_figures(performance, task, 3)}  "
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
    ids = LabelSchema.of(schema).id_of
    images = [Image.fromarray(decode_image(sample.image)) for sample in samples[:count]]
    truths = [{"boxes": s.boxes, "labels": [ids[c] for c in s.classes]} for s in samples[:count]]
    sheet = gallery(images, predictions[:count], truths, schema, threshold)
    write_atomic(path, lambda f: sheet.save(f, format="JPEG", quality=90))
    log.info("Wrote %s", path)


def coco_ground_truth(samples, schema):
    """A pycocotools COCO object holding the samples' boxes (and, for tasks with masks, their RLEs), image ids
    being sample positions. Ignored regions (COCO crowd, VOC difficult) are crowd regions to pycocotools.
    """
    masks = task_of(schema).masks
    ids = LabelSchema.of(schema).id_of
    annotations = []
    for image_id, sample in enumerate(samples):
        rles = sample_rles(sample) if masks else [None] * len(sample.boxes)
        for (x1, y1, x2, y2), name, ignored, rle in zip(sample.boxes, sample.classes, sample.ignored, rles):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(ignored),
                                "area": float(coco_mask.area(rle)) if masks else (x2 - x1) * (y2 - y1),
                                **({"segmentation": rle} if masks else {})})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(samples)],
                    "annotations": annotations,
                    "categories": [{"id": label["id"], "name": label["name"]} for label in schema["labels"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_results(predictions):
    """The predictions as pycocotools results, image ids being positions: bbox as x, y, w, h, and
    segmentation (RLE) where predictions carry masks."""
    return [{"image_id": image_id, "category_id": int(label), "score": float(score),
             "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
             **({"segmentation": p["rles"][i]} if "rles" in p else {})}
            for image_id, p in enumerate(predictions)
            for i, (box, score, label) in enumerate(zip(p["boxes"], p["scores"], p["labels"]))]


def coco_map(samples, predictions, schema):
    """mAP@0.5 and mAP@[.5:.95] over all detections, by pycocotools, for each of the task's iou types:
    {'map_50', 'map_50_95'} (boxes) and, with masks, {'segm_map_50', 'segm_map_50_95'}."""
    task = task_of(schema)
    results = coco_results(predictions)
    figures = {}
    for iou_type in task.iou_types:
        prefix = KEY_PREFIX[iou_type]
        figures[f"{prefix}map_50"], figures[f"{prefix}map_50_95"] = 0.0, 0.0
        if not results:
            continue
        ground_truth = coco_ground_truth(samples, schema)
        other = "segmentation" if iou_type == "bbox" else "bbox"  # loadRes derives area and box from what is left
        with contextlib.redirect_stdout(io.StringIO()):
            detections = ground_truth.loadRes([{k: v for k, v in r.items() if k != other} for r in results])
            evaluator = COCOeval(ground_truth, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        figures[f"{prefix}map_50"] = max(float(evaluator.stats[1]), 0.0)
        figures[f"{prefix}map_50_95"] = max(float(evaluator.stats[0]), 0.0)
    return figures
