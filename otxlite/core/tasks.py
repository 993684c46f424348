"""Tasks: the one place that says what a task's instances carry, how its predictions are matched, which COCO
iou types it reports (and under which performance.json keys), and what its exported models output.

Stages ask the task of a template or label schema (`task_of`) for these; they do not test its name.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torchvision.models.detection.roi_heads import paste_masks_in_image

from otxlite.core.errors import OtxliteError
from otxlite.core.metrics import box_overlaps, mask_overlaps

MASK_THRESHOLD = 0.5  # a pixel belongs to an instance where its mask probability is above this
# What an exported mask model returns for masks (its metadata's "mask_output"): each detection's M x M probabilities
# (28 x 28 for torchvision's Mask R-CNN), which the predictors and the deploy runner paste into the image. Pasted
# inside the graph, torchvision's per-detection Loop took 75-81 % of the OpenVINO model's time.
MASK_OUTPUT = "box"
KEY_PREFIX = {"bbox": "", "segm": "segm_"}  # performance.json keys: map_50 (boxes), segm_map_50 (masks)


@dataclass(frozen=True)
class Task:
    name: str
    masks: bool  # instances carry masks: samples must have them, training targets and predictions hold them
    iou_types: tuple  # pycocotools iou types reported, the headline first
    overlaps: Callable  # one image's [detections, ground truths] IoU matrix, for matching (metrics)
    outputs: tuple  # an exported model's outputs, in order

    @property
    def headline(self):
        """The performance key that picks the best epoch and is reported first: map_50 or segm_map_50."""
        return KEY_PREFIX[self.iou_types[0]] + "map_50"

    @property
    def unit(self):
        """What mAP is of, in messages: 'mask ' for instance segmentation, '' (boxes, as always) for detection."""
        return "mask " if self.masks else ""


TASKS = {task.name: task for task in (
    Task("detection", masks=False, iou_types=("bbox",), overlaps=box_overlaps, outputs=("boxes", "scores", "labels")),
    Task("instance_segmentation", masks=True, iou_types=("segm", "bbox"), overlaps=mask_overlaps,
         outputs=("boxes", "scores", "labels", "masks")),
)}


def task_of(source):
    """The Task of a template or a label schema (both carry 'task'; detection when absent, as before tasks)."""
    name = source.get("task", "detection")
    if name not in TASKS:
        raise OtxliteError(f"Unknown task '{name}'. Known: {', '.join(TASKS)}.")
    return TASKS[name]


def as_detections(outputs, image_size=None):
    """A model's outputs (numpy: boxes [N, 4], scores, labels, and when the task has masks, masks: [N, 1, H, W]
    probabilities pasted into the image, or with image_size (H, W) an exported model's per-box [N, 1, M, M]) as
    otxlite's detections dict; masks become COCO RLEs ('rles'), thresholded at MASK_THRESHOLD."""
    labels = np.asarray(outputs["labels"]).reshape(-1)
    kept = labels > 0  # a row of background: what OpenVINO can return for "no detection"
    detections = {"boxes": np.asarray(outputs["boxes"], np.float32).reshape(-1, 4)[kept],
                  "scores": np.asarray(outputs["scores"]).reshape(-1)[kept], "labels": labels[kept]}
    if "masks" in outputs:
        masks = np.asarray(outputs["masks"], np.float32)
        masks = masks.reshape(len(labels), 1, *masks.shape[-2:])[kept]
        if image_size is not None:
            masks = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(detections["boxes"]),
                                         tuple(image_size)).numpy()
        masks = masks[:, 0] > MASK_THRESHOLD
        detections["rles"] = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) \
            if len(masks) else []
    return detections
