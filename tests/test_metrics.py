"""Metrics on cases computed by hand, against a plain loop implementation, and against pycocotools."""

import numpy as np
import pytest
from conftest import SAMPLE

from otxlite.core.labels import LabelSchema
from otxlite.core.metrics import THRESHOLD_GRID, best_threshold, detection_metrics
from otxlite.data.records import load_split
from otxlite.data.specs import SplitSpec
from otxlite.engine.evaluate import coco_map, score

A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
FAR = [100, 100, 110, 110]


def gt(boxes, labels):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels)}


def det(boxes, scores, labels):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "scores": np.array(scores, dtype=float),
            "labels": np.array(labels)}


def metrics(gts, dets, threshold=None, classes=(1, 2)):
    return detection_metrics(gts, dets, list(classes), threshold)


def test_perfect_predictions_give_f1_and_map_of_one():
    result = metrics([gt([A, B], [1, 2]), gt([C], [1])], [det([A, B], [0.9, 0.8], [1, 2]), det([C], [0.95], [1])])
    assert result["map"] == 1.0 and result["f_measure"] == 1.0
    assert result["confidence_threshold"] == 0.775  # highest grid value below the lowest score, 0.8
    assert result["per_class"][1] | {"precision_curve": 0, "recall_curve": 0} == {
        "gts": 2, "dets": 2, "recall": 1.0, "ap": 1.0, "precision_curve": 0, "recall_curve": 0}


def test_one_false_positive():
    result = metrics([gt([A, B], [1, 1])], [det([A, B, FAR], [0.9, 0.8, 0.7], [1, 1, 1])], threshold=0.5)
    assert result["f_measure"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # TP 2, FP 1, FN 0 -> 0.8
    assert result["map"] == 1.0  # the false positive ranks below every true one
    tuned = metrics([gt([A, B], [1, 1])], [det([A, B, FAR], [0.9, 0.8, 0.7], [1, 1, 1])])
    assert (tuned["confidence_threshold"], tuned["f_measure"]) == (0.775, 1.0)


def test_a_false_positive_ranked_first_halves_precision_at_the_start():
    result = metrics([gt([A], [1])], [det([FAR, A], [0.9, 0.8], [1, 1])], threshold=0.5)
    assert result["f_measure"] == pytest.approx(2 / 3)
    assert result["map"] == pytest.approx(0.5)  # precision 1/2 at recall 1 on all 101 recall points


def test_one_missed_object():
    result = metrics([gt([A, B], [1, 1])], [det([A], [0.9], [1])], threshold=0.5)
    assert result["f_measure"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert result["map"] == pytest.approx(51 / 101)  # precision 1 up to recall 0.5: 51 of 101 recall points
    assert result["per_class"][1]["recall"] == 0.5


def test_duplicate_detection_of_one_object_is_a_false_positive():
    result = metrics([gt([A], [1])], [det([A, [0, 0, 10, 11]], [0.9, 0.8], [1, 1])], threshold=0.5)
    assert result["f_measure"] == pytest.approx(2 / 3)  # TP 1, FP 1
    assert result["map"] == 1.0
    tuned = metrics([gt([A], [1])], [det([A, [0, 0, 10, 11]], [0.9, 0.8], [1, 1])])
    assert (tuned["confidence_threshold"], tuned["f_measure"]) == (0.875, 1.0)


def test_class_mix_up_is_a_miss_and_a_false_positive():
    result = metrics([gt([A], [1])], [det([A], [0.9], [2])], threshold=0.5)
    assert result["f_measure"] == 0.0
    assert result["per_class"][1]["ap"] == 0.0
    assert np.isnan(result["per_class"][2]["ap"])  # no ground truth of class 2: left out of mAP
    assert result["map"] == 0.0


def test_iou_must_reach_one_half():
    just = [0, 0, 10, 5]  # IoU with A = 50 / 100 = 0.5
    below = [0, 0, 10, 4.9]
    assert metrics([gt([A], [1])], [det([just], [0.9], [1])], 0.5)["f_measure"] == 1.0
    assert metrics([gt([A], [1])], [det([below], [0.9], [1])], 0.5)["f_measure"] == 0.0


def test_higher_score_takes_the_better_ground_truth_first():
    # The 0.9 detection overlaps both objects but A best; the 0.8 one overlaps only A: it is a duplicate.
    overlapping = [0, 0, 10, 20]  # IoU 0.5 with A, 0 with B... and with [0, 10, 10, 20] 0.5
    lower = [0, 10, 10, 20]
    result = metrics([gt([A, lower], [1, 1])], [det([A, overlapping], [0.9, 0.8], [1, 1])], threshold=0.5)
    assert result["f_measure"] == 1.0  # 0.9 takes A; 0.8 then takes the second object


def test_threshold_search_picks_the_expected_value_and_ties_go_up():
    # TP 0.9, TP 0.6, FP 0.55, FP 0.5, TP 0.3 against 3 objects. Hand computed F1:
    # t < 0.3: 6/8; [0.3, 0.5): 4/7; [0.5, 0.55): 4/6; [0.55, 0.6): 4/5 (best); [0.6, 0.9): 2/4.
    dets = det([A, B, FAR, [200, 200, 210, 210], C], [0.9, 0.6, 0.55, 0.5, 0.3], [1] * 5)
    result = metrics([gt([A, B, C], [1, 1, 1])], [dets])
    assert result["confidence_threshold"] == 0.575 and result["f_measure"] == pytest.approx(0.8)
    expected = np.select([THRESHOLD_GRID < 0.3, THRESHOLD_GRID < 0.5, THRESHOLD_GRID < 0.55, THRESHOLD_GRID < 0.6,
                          THRESHOLD_GRID < 0.9], [6 / 8, 4 / 7, 4 / 6, 4 / 5, 2 / 4], 0.0)
    np.testing.assert_allclose(result["f1_curve"], expected)
    assert best_threshold(np.ones(39)) == (0.975, 1.0)


def test_score_equal_to_the_threshold_is_not_kept():
    assert metrics([gt([A], [1])], [det([A], [0.5], [1])], threshold=0.5)["f_measure"] == 0.0


@pytest.mark.parametrize("gts, dets, f1, mean_ap", [
    ([gt([A], [1])], [det([], [], [])], 0.0, 0.0),               # no predictions: one miss
    ([gt([], [])], [det([A], [0.9], [1])], 0.0, 0.0),            # an image without objects: one false positive
    ([gt([], [])], [det([], [], [])], 0.0, 0.0),                 # nothing at all: defined as 0, not 0/0
    ([gt([A], [1]), gt([], [])], [det([A], [0.9], [1]), det([B], [0.8], [2])], 2 / 3, 1.0),  # class 2: no GT
])
def test_empty_cases_have_defined_results(gts, dets, f1, mean_ap):
    result = metrics(gts, dets, threshold=0.5)
    assert result["f_measure"] == pytest.approx(f1)
    assert result["map"] == mean_ap
    tuned = metrics(gts, dets)
    assert tuned["confidence_threshold"] in THRESHOLD_GRID and tuned["f_measure"] >= result["f_measure"]


def naive_f1(gts, dets, threshold):
    """Plain per-box loops: the reference the vectorised code must agree with."""
    tp = fp = fn = 0
    for g, d in zip(gts, dets):
        taken = set()
        for i in sorted(range(len(d["scores"])), key=lambda i: -d["scores"][i]):
            if d["scores"][i] <= threshold:
                continue
            best, best_iou = None, 0.5
            for j in range(len(g["labels"])):
                if j in taken or g["labels"][j] != d["labels"][i]:
                    continue
                x1, y1 = max(d["boxes"][i][0], g["boxes"][j][0]), max(d["boxes"][i][1], g["boxes"][j][1])
                x2, y2 = min(d["boxes"][i][2], g["boxes"][j][2]), min(d["boxes"][i][3], g["boxes"][j][3])
                inter = max(0, x2 - x1) * max(0, y2 - y1)
                area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
                iou = inter / (area(d["boxes"][i]) + area(g["boxes"][j]) - inter)
                if iou >= best_iou:
                    best, best_iou = j, iou
            if best is None:
                fp += 1
            else:
                tp += 1
                taken.add(best)
        fn += len(g["labels"]) - sum(1 for _ in taken)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def noisy_predictions(samples, schema, seed):
    """Jittered copies of the true boxes, some with the wrong class, plus random false positives.

    Scores are distinct: libraries break ties between equal scores in different orders.
    """
    rng = np.random.default_rng(seed)
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    predictions = []
    for sample in samples:
        boxes = np.array(sample.boxes).reshape(-1, 4)
        labels = np.array([ids[c] for c in sample.classes])
        keep = rng.random(len(boxes)) < 0.85
        boxes = boxes[keep] + np.round(rng.normal(0, 6, (keep.sum(), 4)) * 4) / 4  # exact in float32 too
        boxes = np.hstack([np.minimum(boxes[:, :2], boxes[:, 2:] - 1), np.maximum(boxes[:, 2:], boxes[:, :2] + 1)])
        labels = np.where(rng.random(keep.sum()) < 0.1, rng.integers(1, 4, keep.sum()), labels[keep])
        extra = rng.integers(0, 15)
        corner = rng.uniform(0, 560, (extra, 2))
        corners = np.round(np.hstack([corner, corner + rng.uniform(10, 80, (extra, 2))]))
        boxes = np.concatenate([boxes, corners])
        labels = np.concatenate([labels, rng.integers(1, 4, extra)])
        scores = rng.choice(np.arange(500, 10000), len(boxes), replace=False) / 10000
        predictions.append({"boxes": boxes, "scores": scores, "labels": labels})
    return predictions


@pytest.fixture(scope="module")
def real_boxes():
    split = load_split(SplitSpec("train", SAMPLE / "ImageSets" / "Main" / "train.txt", SAMPLE / "JPEGImages"))
    schema = LabelSchema.of_classes(split.class_order)
    return split.samples, schema


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_agrees_with_a_plain_loop_implementation(real_boxes, seed):
    samples, schema = real_boxes
    predictions = noisy_predictions(samples, schema, seed)
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    gts = [gt(s.boxes, [ids[c] for c in s.classes]) for s in samples]
    result = detection_metrics(gts, predictions, [1, 2, 3])
    for index in (0, 10, 20, 30):
        threshold = THRESHOLD_GRID[index]
        assert result["f1_curve"][index] == pytest.approx(naive_f1(gts, predictions, threshold))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_at_half_agrees_with_pycocotools_and_torchmetrics(real_boxes, seed):
    torchmetrics_detection = pytest.importorskip("torchmetrics.detection")
    import torch

    samples, schema = real_boxes
    predictions = noisy_predictions(samples, schema, seed)
    performance, result = score(samples, predictions, schema)
    assert result["map"] == pytest.approx(performance["map_50"], abs=1e-9)
    assert performance["map_50"] == pytest.approx(coco_map(samples, predictions, schema)["map_50"])

    ids = {label["name"]: label["id"] for label in schema["labels"]}
    reference = torchmetrics_detection.MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True)
    reference.update([{k: torch.as_tensor(v, dtype=torch.float32 if k != "labels" else torch.int64)
                       for k, v in p.items()} for p in predictions],
                     [{"boxes": torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4),
                       "labels": torch.tensor([ids[c] for c in s.classes])} for s in samples])
    expected = reference.compute()
    # Above, the table equals pycocotools to 1e-9. torchmetrics builds its own COCO objects first, and
    # on these synthetic boxes its per-class AP differs from pycocotools' by up to ~2e-3 (not understood yet).
    assert performance["map_50"] == pytest.approx(expected["map_50"].item(), abs=5e-3)
    for name, ap in zip([label["name"] for label in schema["labels"]], expected["map_per_class"].tolist()):
        assert performance["per_class"][name]["ap"] == pytest.approx(ap, abs=5e-3)
