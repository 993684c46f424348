"""Tiling: large images with small objects, trained on and predicted as overlapping tiles.

A template's hyper_parameters.tiling says whether (`enable`: auto, true, false) and how. Training sees every image
whole (downscaled to the model's input, as it always is) and cut into tiles of tile_size image pixels; a box cut
by a tile edge is clipped, and dropped when less than min_visibility of it remains. Prediction runs the whole
image and every tile through the same model, drops a tile's detections that touch one of its inner edges (the
object is cut there; the overlap or the whole image shows it entire), and merges the rest with class-wise NMS.
The settings travel inside the template, in weights.pth and in the exported models' metadata, so every runner
tiles as the model was trained.
"""

import logging
import math
from dataclasses import replace

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torchvision.ops import batched_nms

from otxlite.core.errors import TemplateError
from otxlite.models.anchors import SMALL_OBJECT, median_sides
from otxlite.models.build import InputSize

log = logging.getLogger("otxlite")
MIN_GAIN = 2.0  # `auto` tiles only when tiles show objects at least this many times larger than the whole image
EDGE_MARGIN = 2  # px: a tile's detection this close to an inner edge of the tile is cut by it


def settings_of(template):
    """The template's tiling settings when tiling is on, else None."""
    settings = template["hyper_parameters"].get("tiling")  # absent from models of earlier otxlite versions
    return settings if settings and settings["enable"] is True else None


def windows(height, width, settings):
    """The tiles (x0, y0, x1, y1) of an image, row by row: tile_size squares overlapping by `overlap`, the last of
    each row and column flush with the image's edge; tiles grow until at most max_tiles cover the image. An
    image that one tile covers has no tiles (the whole image is already run)."""
    size = settings["tile_size"]
    while len(starts(width, size, settings["overlap"])) * len(starts(height, size, settings["overlap"])) \
            > settings["max_tiles"]:
        size = math.ceil(size * 1.1)
    if width <= size and height <= size:
        return []
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in starts(height, size, settings["overlap"]) for x in starts(width, size, settings["overlap"])]


def starts(length, size, overlap):
    """Where tiles of `size` start along a side of `length`, overlapping by `overlap` of a tile."""
    if length <= size:
        return [0]
    step = max(1, round(size * (1 - overlap)))
    return list(range(0, length - size, step)) + [length - size]


def cut(sample, window, min_visibility):
    """The sample as seen through window: boxes clipped and in the tile's pixels, those with less than
    min_visibility of their area inside dropped; instance shapes stay in image pixels (the dataset crops masks)."""
    x0, y0, x1, y1 = window
    tile = replace(sample, boxes=[], classes=[], records=[], ignored=[], shapes=[], width=x1 - x0, height=y1 - y0,
                   window=window)
    for box, name, record, ignored, shape in zip(sample.boxes, sample.classes, sample.records, sample.ignored,
                                                 sample.shapes):
        clipped = [max(box[0], x0) - x0, max(box[1], y0) - y0, min(box[2], x1) - x0, min(box[3], y1) - y0]
        visible = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
        if visible > 0 and visible >= min_visibility * (box[2] - box[0]) * (box[3] - box[1]):
            tile.add(clipped, name, record, ignored, shape)
    return tile


def tiled_samples(samples, settings, seed):
    """The training set with tiling: each image whole, then its tiles. A tile with objects is kept with probability
    sampling_ratio, an empty one with probability sampling_ratio * empty_tile_ratio (seeded: the same tiles on every
    run and on resume)."""
    generator = np.random.default_rng(seed)
    tiled, empty = [], 0
    for sample in samples:
        tiled.append(sample)
        for window in windows(sample.height, sample.width, settings):
            tile = cut(sample, window, settings["min_visibility"])
            has_objects = not all(tile.ignored)
            if generator.random() < settings["sampling_ratio"] * (1 if has_objects else settings["empty_tile_ratio"]):
                tiled.append(tile)
                empty += not has_objects
    log.info("Tiling: %d training images as %d items (each image whole, %d tiles of which %d empty; tile_size %d, "
             "overlap %g).", len(samples), len(tiled), len(tiled) - len(samples), empty, settings["tile_size"],
             settings["overlap"])
    return tiled


def training_samples(samples, template, seed=0):
    """samples as training sees them: with tiling on, each image whole and then its tiles (tiled_samples)."""
    settings = settings_of(template)
    return tiled_samples(samples, settings, seed) if settings else samples


def decided(template, model, samples, schema):
    """The template with tiling decided for these training samples: `auto` becomes true or false (logged with the
    reason), and an unset tile_size is chosen so that the median object covers object_tile_ratio of a tile, at
    least the model's input side. Tiling is worth it when some class's median object is under SMALL_OBJECT px at
    the model's input and tiles would show objects at least MIN_GAIN times larger."""
    settings = dict(template["hyper_parameters"]["tiling"])
    if settings["enable"] is False or not samples:
        return template
    input_size = InputSize.of(model)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for s in samples for b, ignored in zip(s.boxes, s.ignored) if not ignored]
    if settings.get("tile_size") is None:
        object_side = math.sqrt(float(np.median(areas)) / settings["object_tile_ratio"]) if areas else 0
        settings["tile_size"] = max(math.ceil(object_side), input_size.side)
    height, width = (int(np.median([getattr(s, side) for s in samples])) for side in ("height", "width"))
    gain = min(input_size.factors(settings["tile_size"], settings["tile_size"])) / min(input_size.factors(height, width))
    sides = median_sides(samples, input_size, schema)
    small = {name: side for name, side in sides.items() if side < SMALL_OBJECT}
    if settings["enable"] == "auto":
        settings["enable"] = bool(small) and gain >= MIN_GAIN
        shown = ", ".join(f"{name} {side:.0f} px" for name, side in (small or sides).items())
        if settings["enable"]:
            reason = (f"median object {shown} at the model's input ({input_size}) is under {SMALL_OBJECT} px, and "
                      f"{settings['tile_size']} px tiles of the median {width}x{height} image show objects "
                      f"{gain:.1f}x larger")
        elif small:
            reason = (f"median object {shown} is under {SMALL_OBJECT} px at the model's input, but {settings['tile_size']}"
                      f" px tiles of the median {width}x{height} image would show objects only {gain:.1f}x larger "
                      f"(under {MIN_GAIN:g}x)")
        else:
            reason = f"every class's median object is at least {SMALL_OBJECT} px at the model's input ({shown})"
        log.info("Tiling (auto): %s: %s. params --tiling.enable %s overrides.", "on" if settings["enable"] else "off",
                 reason, "false" if settings["enable"] else "true")
        asked = False
    else:
        asked = True
    if settings["enable"] and not any(windows(s.height, s.width, settings) for s in samples):
        largest = max(samples, key=lambda s: s.width * s.height)
        problem = (f"tile_size {settings['tile_size']} (max_tiles {settings['max_tiles']}) cuts none of the "
                   f"{len(samples)} training images into tiles: one tile covers each whole (the largest is "
                   f"{largest.width}x{largest.height})")
        if asked:
            raise TemplateError(f"tiling.enable true: {problem}. Give a smaller tile size (params --tiling.tile_size "
                                f"N), or leave tiling off (--tiling.enable false).")
        log.warning("Tiling (auto): off after all: %s.", problem)
        settings["enable"] = False
    hyper_parameters = {**template["hyper_parameters"], "tiling": settings}
    return {**template, "hyper_parameters": hyper_parameters}


class TiledPredictor:
    """A predictor run on the whole image and on its tiles, the detections merged in image pixels. It answers
    like the predictor it wraps (schema, template, confidence_threshold, input_size, device)."""

    def __init__(self, predictor, settings):
        self.predictor, self.settings = predictor, settings

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def __call__(self, images):
        results = []
        for image in images:
            height, width = image.shape[:2]
            tiles = windows(height, width, self.settings)
            parts = self.predictor([image] + [image[y0:y1, x0:x1] for x0, y0, x1, y1 in tiles])
            results.append(merged(parts, [(0, 0, width, height)] + tiles, (height, width), self.settings["merge_iou"]))
        return results


def merged(parts, windows_of_parts, image_size, iou_threshold):
    """Detections of an image's parts (the whole image first, then its tiles at windows_of_parts) as one
    detections dict in image pixels, best score first: a tile's detections cut by one of its inner edges are
    dropped, the rest shifted and merged by class-wise NMS at iou_threshold. Masks are pasted into the image;
    saliency maps are the whole image's."""
    height, width = image_size
    boxes, scores, labels, origins = [], [], [], []
    for index, (part, (x0, y0, x1, y1)) in enumerate(zip(parts, windows_of_parts)):
        shifted = part["boxes"] + np.array([x0, y0, x0, y0], np.float32)
        inner_cut = (((shifted[:, 0] <= x0 + EDGE_MARGIN) & (x0 > 0)) | ((shifted[:, 1] <= y0 + EDGE_MARGIN) & (y0 > 0))
                     | ((shifted[:, 2] >= x1 - EDGE_MARGIN) & (x1 < width))
                     | ((shifted[:, 3] >= y1 - EDGE_MARGIN) & (y1 < height)))
        kept = ~inner_cut if index else np.ones(len(shifted), bool)
        boxes.append(shifted[kept])
        scores.append(part["scores"][kept])
        labels.append(part["labels"][kept])
        origins += [(index, i) for i in np.flatnonzero(kept)]
    boxes, scores, labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)),
                       torch.from_numpy(labels.astype(np.int64)), iou_threshold).numpy()
    result = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if "rles" in parts[0]:
        result["rles"] = [placed(parts[origins[i][0]]["rles"][origins[i][1]], windows_of_parts[origins[i][0]], image_size)
                          for i in keep]
    if "saliency" in parts[0]:
        result["saliency"] = parts[0]["saliency"]
    return result


def placed(rle, window, image_size):
    """A part's mask (COCO RLE in the part's pixels) as an RLE of the whole image."""
    x0, y0, x1, y1 = window
    if (x0, y0, x1, y1) == (0, 0, image_size[1], image_size[0]):
        return rle
    canvas = np.zeros(image_size, np.uint8, order="F")
    canvas[y0:y1, x0:x1] = coco_mask.decode(rle)
    return coco_mask.encode(canvas)


def with_tiling(predictor):
    """predictor, tiled when the template it carries says its model was trained with tiling."""
    settings = settings_of(predictor.template)
    return TiledPredictor(predictor, settings) if settings else predictor
