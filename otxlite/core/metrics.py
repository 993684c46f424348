"""Detection and instance-segmentation metrics at one IoU threshold (box or mask IoU): matching, per-class
AP, and micro F1 against confidence.

Everything is vectorised with numpy. Matching is COCO's: within each image and class, detections
in descending score order each take the unmatched ground truth of highest IoU (at least the IoU
threshold). A detection's match never depends on lower-scored detections, so one matching pass
gives the true positives for every confidence threshold at once. Ignored ground truth (COCO crowd,
VOC difficult) is handled as pycocotools handles crowd regions: a detection that matches no other
ground truth but covers an ignored region (intersection over the detection's own area at least the
threshold) is left out, neither a true nor a false positive; ignored regions count as no ground truth.
"""

import numpy as np
from pycocotools import mask as coco_mask

IOU_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(1, 40) * 0.025, 3)  # 0.025, 0.05, ..., 0.975
RECALL_POINTS = np.linspace(0, 1, 101)  # COCO's 101-point interpolation


def pad(arrays, shape, fill):
    """Stack ragged per-image arrays into one [images, longest, *shape] array."""
    longest = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), longest, *shape), fill, dtype=np.float64)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = np.asarray(a, dtype=np.float64).reshape(len(a), *shape)
    return out


def box_iou(a, b, crowd=False):
    """IoU of boxes a [..., D, 4] with boxes b [..., G, 4] (x1, y1, x2, y2) -> [..., D, G].

    crowd=True divides by the area of a alone, as pycocotools does for crowd regions.
    """
    a, b = a[..., :, None, :], b[..., None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a if crowd else area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def ignored_mask(ground_truth):
    """Which of an image's ground-truth boxes are ignored regions (none when the key is absent)."""
    return np.asarray(ground_truth.get("ignored", np.zeros(len(ground_truth["labels"]))), dtype=bool).reshape(-1)


def box_overlaps(detections, ground_truth):
    """[D, G] IoU of an image's detections with its ground-truth boxes; for ignored boxes, intersection over
    the detection's area (pycocotools' crowd rule)."""
    detected = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
    truth = np.asarray(ground_truth["boxes"], dtype=np.float64).reshape(-1, 4)
    return np.where(ignored_mask(ground_truth), box_iou(detected, truth, crowd=True), box_iou(detected, truth))


def mask_overlaps(detections, ground_truth):
    """[D, G] mask IoU of an image's detections ('rles') with its ground truth ('rles'), crowd rule as above."""
    if not len(detections["rles"]) or not len(ground_truth["rles"]):
        return np.zeros((len(detections["rles"]), len(ground_truth["rles"])))
    return np.asarray(coco_mask.iou(list(detections["rles"]), list(ground_truth["rles"]),
                                    ignored_mask(ground_truth).astype(np.uint8).tolist()), dtype=np.float64)


def match(ground_truths, predictions, overlaps=box_overlaps, iou_threshold=IOU_THRESHOLD):
    """Match predictions to ground truths image by image.

    ground_truths and predictions are lists (one entry per image) of dicts with 'labels' [N] and what overlaps
    reads ('boxes' [N, 4], or 'rles' for masks; ground truths optionally 'ignored' [N], predictions also
    'scores' [N]). overlaps(detections, ground_truth) gives one image's [D, G] IoU matrix. Returns flat arrays
    over the predictions that are not left out on ignored regions: scores, labels, is_true_positive.
    """
    gt_labels = pad([g["labels"] for g in ground_truths], (), -1)
    gt_ignored = pad([ignored_mask(g) for g in ground_truths], (), 0).astype(bool)
    order = [np.argsort(-np.asarray(p["scores"]), kind="mergesort") for p in predictions]
    labels = pad([np.asarray(p["labels"])[o] for p, o in zip(predictions, order)], (), -2)
    scores = pad([np.asarray(p["scores"])[o] for p, o in zip(predictions, order)], (), np.nan)
    overlap = np.full((*labels.shape, gt_labels.shape[1]), -1.0)  # [images, detections, ground truths]
    for image, (p, g, o) in enumerate(zip(predictions, ground_truths, order)):
        matrix = overlaps(sorted_by(p, o), g)
        overlap[image, :matrix.shape[0], :matrix.shape[1]] = matrix
    other_class = labels[:, :, None] != gt_labels[:, None, :]
    iou = np.where(other_class | gt_ignored[:, None, :], -1, overlap)
    taken = np.zeros(gt_labels.shape, dtype=bool)
    true_positive = np.zeros(labels.shape, dtype=bool)
    rows = np.arange(len(labels))
    for rank in range(labels.shape[1]):  # the rank-th best detection of every image at once
        candidates = np.where(taken, -1, iou[:, rank, :])
        if candidates.shape[1] == 0:
            break
        best = candidates.argmax(axis=1)
        hit = candidates[rows, best] >= iou_threshold
        true_positive[:, rank] = hit
        taken[rows[hit], best[hit]] = True
    cover = np.where(other_class | ~gt_ignored[:, None, :], -1, overlap)
    on_ignored = ~true_positive & (cover.max(axis=2, initial=-1) >= iou_threshold)
    kept = ~np.isnan(scores) & ~on_ignored
    return scores[kept], labels[kept].astype(int), true_positive[kept]


def sorted_by(prediction, order):
    """A prediction's per-detection entries in the given order."""
    return {k: [v[i] for i in order] if isinstance(v, list) else np.asarray(v)[order] for k, v in prediction.items()}


def average_precision(scores, true_positive, num_ground_truths):
    """COCO 101-point interpolated AP, precision and recall of one class's detections."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(true_positive[order])
    fp = np.cumsum(~true_positive[order])
    if num_ground_truths == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    if len(scores) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    recall = tp / num_ground_truths
    precision = tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # precision made non-increasing in recall
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean()), precision, recall


def f1_curve(scores, true_positive, num_ground_truths, thresholds=THRESHOLD_GRID):
    """Micro F1 at each threshold, keeping detections whose score is strictly above it."""
    order = np.argsort(-scores, kind="mergesort")
    tp_so_far = np.concatenate([[0], np.cumsum(true_positive[order])])
    kept = np.searchsorted(-scores[order], -np.asarray(thresholds), side="left")  # how many score above each
    tp = tp_so_far[kept]
    fp = kept - tp
    fn = num_ground_truths - tp
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def best_threshold(f1, thresholds=THRESHOLD_GRID):
    """The threshold of highest F1; ties go to the higher threshold."""
    index = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(thresholds[index]), float(f1[index])


def detection_metrics(ground_truths, predictions, class_ids, confidence_threshold=None, overlaps=box_overlaps):
    """Per-class AP/recall table, mAP, and micro F1 at a given or tuned confidence threshold, predictions
    matched by overlaps (box_overlaps or mask_overlaps).

    Every figure but F1 uses all detections; F1 uses those scoring above the threshold.
    Classes without ground truth get AP nan and are left out of the mAP, as in COCO.
    """
    scores, labels, true_positive = match(ground_truths, predictions, overlaps)
    gt_labels = np.concatenate([np.asarray(g["labels"]).reshape(-1)[~ignored_mask(g)] for g in ground_truths]
                               or [np.zeros(0)])
    per_class = {}
    for class_id in class_ids:
        mine = labels == class_id
        num_gt = int((gt_labels == class_id).sum())
        ap, precision, recall = average_precision(scores[mine], true_positive[mine], num_gt)
        per_class[class_id] = {"gts": num_gt, "dets": int(mine.sum()),
                               "recall": float(recall[-1]) if len(recall) else (0.0 if num_gt else float("nan")),
                               "ap": ap, "precision_curve": precision, "recall_curve": recall}
    aps = [c["ap"] for c in per_class.values() if not np.isnan(c["ap"])]
    f1 = f1_curve(scores, true_positive, len(gt_labels))
    if confidence_threshold is None:
        threshold, f_measure = best_threshold(f1)
    else:
        threshold = float(confidence_threshold)
        f_measure = float(f1_curve(scores, true_positive, len(gt_labels), np.array([threshold]))[0])
    return {"map": float(np.mean(aps)) if aps else 0.0, "per_class": per_class, "f1_curve": f1,
            "confidence_threshold": threshold, "f_measure": f_measure}
