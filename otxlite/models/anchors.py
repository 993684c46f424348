"""Anchors fitted to the training boxes, and a warning for objects too small for the model's input.

Anchor recall is the fraction of training boxes, at the model's input scale and position, whose best anchor
has IoU >= 0.5. When any class's recall is below the template's anchors.min_recall, anchor sizes (and, from
random weights, aspect ratios) are re-clustered on the boxes with k-means, keeping the generator's number of
anchors per location so the head's shape is unchanged. Sizes are clustered by the IoU of centred squares
(which ranks as distance in log size), aspect ratios in log space, each distinct size once (see kmeans_1d);
the fit is kept only when it raises the mean of the classes' recalls (mAP's weighting).
"""

import copy
import logging
import math

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from otxlite.models.build import InputSize, anchor_owner, anchors_of, set_anchors

log = logging.getLogger("otxlite")
MATCH_IOU = 0.5
SMALL_OBJECT = 32  # px at the model's input: COCO's "small" objects, which detectors find worst
SMALL_OBJECT_TEMPLATE = "fasterrcnn_mobilenet_v3_large_stride16_fpn"
KMEANS_STEPS = 50
MIN_STRIDES = 1.5  # smallest anchor per level, in strides: IoU >= 0.5 needs an offset under a third of the size
REFINE_FACTORS = (0.7, 0.85, 1.2, 1.4)
REFINE_PASSES = 2
MAX_PROBE_BOXES = 2000  # training boxes (a seeded sample) on which anchor settings are compared
LOG_BIN = 0.05  # log-size bin (5%) within which boxes count as one size for clustering


def boxes_at_input(samples, input_size, label_ids):
    """(boxes [N, 4] at the model's input scale, labels [N], canvas (height, width) that holds every image)."""
    boxes, labels, canvas = [], [], (1, 1)
    for sample in samples:
        factor_y, factor_x = input_size.factors(sample.height, sample.width)
        kept = [(box, name) for box, name, ignored in zip(sample.boxes, sample.classes, sample.ignored) if not ignored]
        boxes += [[box[0] * factor_x, box[1] * factor_y, box[2] * factor_x, box[3] * factor_y] for box, _ in kept]
        labels += [label_ids[name] for _, name in kept]
        resized = input_size.resized(sample.height, sample.width)
        canvas = (max(canvas[0], resized[0]), max(canvas[1], resized[1]))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64), canvas


def blank_features(model, height, width):
    """The model's backbone features (a list of maps) on a blank height x width image, run in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, height, width))
    model.train(was_training)
    return [features] if isinstance(features, torch.Tensor) else list(features.values())


class AnchorProbe:
    """The model's anchors on an input of canvas (height, width), padded as its batches are, against the
    training boxes; the backbone runs once, so anchor settings can be tried quickly."""

    def __init__(self, model, boxes, labels, canvas):
        divisible = getattr(model.transform, "size_divisible", 1)
        height, width = (math.ceil(side / divisible) * divisible for side in canvas)
        self.images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
        self.features = blank_features(model, height, width)
        self.strides = [max(height / f.shape[-2], width / f.shape[-1]) for f in self.features]
        self.model, self.boxes, self.labels = model, boxes, labels

    def hits(self, chunk=512):
        """Per box: whether its best anchor has IoU >= MATCH_IOU."""
        owner, name = anchor_owner(self.model)
        with torch.no_grad():
            anchors = getattr(owner, name)(self.images, self.features)[0]
        return torch.cat([box_iou(self.boxes[i:i + chunk], anchors).max(1).values >= MATCH_IOU
                          for i in range(0, len(self.boxes), chunk)])

    def score(self, anchors):
        """Mean over classes of the recall with these anchor settings (set on the model)."""
        set_anchors(self.model, anchors)
        return float(self.class_recalls(self.hits()).mean())

    def class_recalls(self, hits):
        return torch.stack([hits[self.labels == i].float().mean() for i in self.labels.unique()])


def kmeans_1d(values, count):
    """count centres (sorted) for log-space values by Lloyd's k-means from evenly spread quantiles.

    Each occupied LOG_BIN-wide bin counts once, so the centres cover every size the data has, not only
    the most frequent one: a few large objects among many small ones still get anchors near their size.
    """
    values = np.unique(np.round(np.asarray(values, dtype=np.float64) / LOG_BIN)) * LOG_BIN
    centres = np.quantile(values, (np.arange(count) + 0.5) / count)
    for _ in range(KMEANS_STEPS):
        nearest = np.abs(values[:, None] - centres[None]).argmin(1)
        centres = np.array([values[nearest == k].mean() if (nearest == k).any() else centres[k] for k in range(count)])
    return np.sort(centres)


def fitted_anchors(model, boxes, input_size, probe, sizes_only):
    """The model's anchor settings re-clustered on boxes (at input scale), with the same counts per level.

    Clustered sizes go to feature levels from the finest up; a level's sizes are raised to at least
    MIN_STRIDES times its stride, since a smaller anchor on a coarser grid misses most positions. Then each
    size is refined by probe: scaled by each of REFINE_FACTORS while that raises the class-mean recall.
    """
    widths, heights = (boxes[:, 2] - boxes[:, 0]).numpy(), (boxes[:, 3] - boxes[:, 1]).numpy()
    log_sizes, log_ratios = 0.5 * np.log(widths * heights), np.log(heights / widths)
    anchors, strides = anchors_of(model), probe.strides
    if "scales" in anchors:  # SSD: one scale per level (and one more), relative to the input side
        floors = [MIN_STRIDES * stride for stride in strides] + [0]
        sizes = np.maximum.accumulate(np.maximum(np.exp(kmeans_1d(log_sizes, len(anchors["scales"]))), floors))
        anchors["scales"] = [round(float(s) / input_size.side, 4) for s in sizes]
        if not sizes_only:  # each ratio r gives anchors of r and 1/r
            anchors["aspect_ratios"] = [[round(float(r), 3) for r in np.exp(kmeans_1d(np.abs(log_ratios), len(level)))]
                                        for level in anchors["aspect_ratios"]]
        return refined(anchors, "scales", probe)
    counts = [len(level) for level in anchors["sizes"]]
    sizes = np.exp(kmeans_1d(log_sizes, sum(counts)))
    starts = np.cumsum([0] + counts)
    levels = [np.maximum(sizes[a:b], MIN_STRIDES * stride) for a, b, stride in zip(starts[:-1], starts[1:], strides)]
    anchors["sizes"] = [[round(float(s), 1) for s in level] for level in levels]
    if not sizes_only:
        anchors["aspect_ratios"] = [[round(float(r), 3) for r in np.exp(kmeans_1d(log_ratios, len(level)))]
                                    for level in anchors["aspect_ratios"]]
    return refined(anchors, "sizes", probe)


def refined(anchors, key, probe):
    """anchors with each value of anchors[key] (a list, or a list per level) scaled by whichever of
    REFINE_FACTORS raises probe's score, for REFINE_PASSES passes."""
    best = probe.score(anchors)
    nested = isinstance(anchors[key][0], list)
    slots = [(i, j) for i, level in enumerate(anchors[key]) for j in range(len(level))] if nested else \
        [(i, None) for i in range(len(anchors[key]))]
    digits = 4 if key == "scales" else 1
    for _ in range(REFINE_PASSES):
        for i, j in slots:
            for factor in REFINE_FACTORS:
                trial = copy.deepcopy(anchors)
                if nested:
                    trial[key][i][j] = round(trial[key][i][j] * factor, digits)
                else:
                    trial[key][i] = round(trial[key][i] * factor, digits)
                score = probe.score(trial)
                if score > best:
                    best, anchors = score, trial
    return anchors


def by_class(hits, labels, schema):
    return ", ".join(f"{label['name']} {hits[labels == label['id']].float().mean():.2f}"
                     for label in schema["labels"] if (labels == label["id"]).any())


def fit_anchors(model, template, samples, schema, pretrained):
    """Measure anchor recall on the training boxes and, when a class's recall is below anchors.min_recall (a
    class without matching anchors is hardly learnt: BCCD's platelets), re-cluster the anchors.

    Returns the template with the anchors used in model.anchors (the model is changed in place), or the
    template unchanged for an anchor-free model or when anchors.fit is off.
    """
    settings = template["hyper_parameters"]["anchors"]
    if anchor_owner(model) is None:
        return template
    input_size = InputSize.of(model)
    boxes, labels, canvas = boxes_at_input(samples, input_size, {l["name"]: l["id"] for l in schema["labels"]})
    if not len(boxes):
        return template
    if len(boxes) > MAX_PROBE_BOXES:
        chosen = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))[:MAX_PROBE_BOXES]
        boxes, labels = boxes[chosen], labels[chosen]
    probe = AnchorProbe(model, boxes, labels, canvas)
    original = anchors_of(model)
    before, before_score = probe.hits(), probe.score(original)
    log.info("Anchor recall (training boxes whose best anchor has IoU >= %g at the model's input, %s): %.3f; "
             "by class %s", MATCH_IOU, input_size, before.float().mean(), by_class(before, labels, schema))
    if not settings["fit"] or float(probe.class_recalls(before).min()) >= settings["min_recall"]:
        return template
    anchors = fitted_anchors(model, boxes, input_size, probe, sizes_only=pretrained)
    after_score = probe.score(anchors)
    after = probe.hits()
    kept = after_score > before_score
    log.info("Re-clustered anchor %s on %d training boxes: recall %.3f -> %.3f, by class %s (class mean %.3f -> "
             "%.3f); %s. params --anchors.fit false keeps the template's.",
             "sizes" if pretrained else "sizes and aspect ratios", len(boxes), before.float().mean(),
             after.float().mean(), by_class(after, labels, schema), before_score, after_score,
             f"using them: {anchors}" if kept else "keeping the template's anchors")
    if not kept:
        set_anchors(model, original)
        return template
    return {**template, "model": {**template["model"], "anchors": anchors}}


def finest_stride(model, side=256):
    """The stride of the model's finest feature map."""
    return min(side / f.shape[-1] for f in blank_features(model, side, side))


def median_sides(samples, input_size, schema):
    """{class name: its median object side (square root of the area) at the model's input}, for the classes with
    objects, in schema order; ignored regions left out."""
    boxes, labels, _ = boxes_at_input(samples, input_size, {l["name"]: l["id"] for l in schema["labels"]})
    sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    return {label["name"]: float(sides[labels == label["id"]].median()) for label in schema["labels"]
            if (labels == label["id"]).any()}


def warn_small_objects(model, template, samples, schema):
    """Warn once when a class's median object size at the model's input is under SMALL_OBJECT px, saying what to
    use: a larger input, and a template with finer features when the model's are too coarse for such objects."""
    input_size = InputSize.of(model)
    small = {name: side for name, side in median_sides(samples, input_size, schema).items() if side < SMALL_OBJECT}
    if not small:
        return
    smallest = min(small.values())
    if input_size.fixed:
        advice = f"this template's input size is fixed; use one that takes min_size, such as {SMALL_OBJECT_TEMPLATE}"
    else:
        factor = SMALL_OBJECT / smallest
        advice = (f"raise the input size: params --model.kwargs.min_size {math.ceil(input_size.min_size * factor / 32) * 32}"
                  f" --model.kwargs.max_size {math.ceil(input_size.max_size * factor / 32) * 32}")
        stride = finest_stride(model)
        if stride * MIN_STRIDES > SMALL_OBJECT and template["task"] == "detection":  # no finer template segments
            advice += (f"; its finest features are at stride {stride:.0f}, too coarse for them: {SMALL_OBJECT_TEMPLATE}"
                       f" reads stride 16")
    log.warning("Small objects: median size %s at %s's input (%s) is under %d px, which detectors find poorly; "
                "%s.", ", ".join(f"{name} {side:.0f} px" for name, side in small.items()), template["id"],
                input_size, SMALL_OBJECT, advice)
