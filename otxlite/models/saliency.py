"""Per-class saliency maps of OTX's kind: where a detector's classification head finds each class.

- One-stage heads (SSD, SSDlite, RetinaNet, FCOS): every feature level's class probabilities (softmax over
  SSD's classes and background, sigmoid for the others), the highest of a cell's anchors, each level resized
  to the finest level's grid and the levels averaged.
- Two-stage heads (Faster and Mask R-CNN), whose class scores belong to proposals, not cells: the box head's
  class probabilities for every proposal, painted into the proposal's box as a bump centred in it, on a grid
  of stride 8, the highest where proposals overlap.

A map is [classes, h, w] (the label schema's classes in order, no background) of probabilities in 0..1, on a
grid covering the whole image as the model saw it.
"""

import contextlib

import torch
from torch.nn.functional import interpolate
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

PAINT_STRIDE = 8
SALIENCY = "saliency"  # the name of the maps' output in models exported with `otxlite export --explain`


@contextlib.contextmanager
def recorded_saliency(model):
    """Hooks that record a forward pass of model; yields a function giving that pass's maps, one per image."""
    seen, hooks = {"levels": []}, []

    def keep(name):
        return lambda module, args, output: seen.__setitem__(name, output)

    hooks.append(model.transform.register_forward_hook(keep("transformed")))
    if isinstance(model, SSD):
        hooks += [level.register_forward_hook(lambda module, args, output: seen["levels"].append(output))
                  for level in model.head.classification_head.module_list]
    elif isinstance(model, (RetinaNet, FCOS)):
        hooks.append(model.head.classification_head.cls_logits.register_forward_hook(
            lambda module, args, output: seen["levels"].append(output)))
    elif isinstance(model, GeneralizedRCNN):
        hooks.append(model.roi_heads.register_forward_pre_hook(lambda module, args: seen.__setitem__("proposals",
                                                                                                      args[1])))
        hooks.append(model.roi_heads.box_predictor.register_forward_hook(keep("box_head")))
    else:
        raise TypeError(f"no saliency maps for {type(model).__name__}")
    try:
        yield lambda: saliency_of(model, seen)
    finally:
        for hook in hooks:
            hook.remove()


def saliency_of(model, seen):
    images, levels = seen["transformed"][0], seen.pop("levels")
    seen["levels"] = []
    padded = images.tensors.shape[-2:]
    if isinstance(model, GeneralizedRCNN):
        maps = painted_proposals(seen["proposals"], seen["box_head"][0].softmax(-1)[:, 1:], padded)
    else:
        maps = level_average(levels, classes=model.head.classification_head.num_columns
                             if isinstance(model, SSD) else model.head.classification_head.num_classes,
                             softmax=isinstance(model, SSD))
    return [image_maps[:, :ceil_div(height * image_maps.shape[-2], padded[0]),
                       :ceil_div(width * image_maps.shape[-1], padded[1])]
            for image_maps, (height, width) in zip(maps, images.image_sizes)]


def ceil_div(numerator, denominator):
    """ceil(numerator / denominator) of positive integers, in integer arithmetic alone: traced for `otxlite export
    --explain`, sizes are tensors and the result stays dynamic (ONNX's integer division truncates)."""
    return (numerator + denominator - 1) // denominator


def level_average(levels, classes, softmax):
    """[N, A x classes, H, W] logits per level -> [N, classes - 1, H0, W0] probabilities on the first level's
    grid: the best anchor of each cell, the levels averaged."""
    first = levels[0].shape[-2:]
    maps = []
    for logits in levels:
        batch, _, height, width = logits.shape
        logits = logits.view(batch, -1, classes, height, width)
        probabilities = logits.softmax(2) if softmax else logits.sigmoid()
        best = probabilities[:, :, 1:].amax(1)
        maps.append(interpolate(best, size=first, mode="bilinear", align_corners=False) if best.shape[-2:] != first
                    else best)
    return torch.stack(maps).mean(0)


def painted_proposals(proposals, probabilities, padded):
    """Each proposal's class probabilities [P, classes] painted into its box on a grid of PAINT_STRIDE cells
    covering the padded (height, width) batch, as
    a bump centred in the box (a Gaussian with a quarter of the box's width and height as sigma, cut at its
    edges); the highest where boxes overlap, 0 where none covers. The bump puts a map's peak in the middle of
    the likeliest boxes rather than on a plateau as large as the box."""
    maps, start = [], 0
    for boxes in proposals:  # slices, not split(): traced for export, a proposal count must stay dynamic
        scores, start = probabilities[start:start + boxes.shape[0]], start + boxes.shape[0]
        y = (torch.arange(0, padded[0], PAINT_STRIDE, device=boxes.device) + PAINT_STRIDE / 2)[None, :, None]
        x = (torch.arange(0, padded[1], PAINT_STRIDE, device=boxes.device) + PAINT_STRIDE / 2)[None, None, :]
        x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
        sigma_x, sigma_y = ((x2 - x1) / 4).clamp(min=1e-3), ((y2 - y1) / 4).clamp(min=1e-3)
        bump = torch.exp(-0.5 * (((x - (x1 + x2) / 2) / sigma_x) ** 2 + ((y - (y1 + y2) / 2) / sigma_y) ** 2))
        bump = torch.where((y >= y1) & (y <= y2) & (x >= x1) & (x <= x2), bump, 0)  # [P, h, w]
        floor = bump.new_zeros((1, *bump.shape[1:]))  # no branch on the proposal count: a traced graph keeps none
        maps.append(torch.stack([torch.cat([bump * score[:, None, None], floor]).amax(0) for score in scores.T]))
    return maps
