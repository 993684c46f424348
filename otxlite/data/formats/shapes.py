"""Instance shapes as annotation formats give them (polygons, COCO RLE, a value in a mask PNG), checked and
rasterised with pycocotools into HxW uint8 masks of the upright image."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

MAX_REACH = 4  # a polygon coordinate may lie this many image sizes from the origin; further is another unit


@dataclass
class Polygons:
    """One instance's outline: one or more polygons, each [x1, y1, x2, y2, ...] in pixels (fractions of the
    image size when the sample is relative, as in YOLO-seg)."""

    parts: list

    def scaled(self, width, height):
        return Polygons([[v * (width if i % 2 == 0 else height) for i, v in enumerate(part)] for part in self.parts])

    def rle(self, width, height):
        return coco_mask.merge(coco_mask.frPyObjects([list(map(float, p)) for p in self.parts], height, width))

    def box(self):
        """[x1, y1, x2, y2] around every part's points, as Ultralytics and Labelme boxes are."""
        xs = [v for part in self.parts for v in part[::2]]
        ys = [v for part in self.parts for v in part[1::2]]
        return [min(xs), min(ys), max(xs), max(ys)]

    def problem(self, width, height):
        """(kind, why) the outline cannot be an instance mask, or None; kind "bad shape" or "mask size"."""
        if any(len(part) < 6 or len(part) % 2 for part in self.parts):
            return "bad shape", "has fewer than 3 points"
        points = np.concatenate([np.reshape(np.asarray(part, np.float64), (-1, 2)) for part in self.parts])
        if not np.isfinite(points).all():
            return "bad shape", "holds NaN or infinity"
        reach = np.abs(points).max(axis=0) / (width, height)
        if reach.max() > MAX_REACH:  # pycocotools would rasterise it over a canvas that size
            return "bad shape", (f"reaches {reach.max():.3g} times the {width}x{height} image's size (written in "
                                 f"other units?)")
        if any(len(np.unique(np.reshape(part, (-1, 2)), axis=0)) < 3 for part in self.parts):
            return "bad shape", "has fewer than 3 distinct points"
        if (points[:, 0].max() <= 0 or points[:, 1].max() <= 0 or points[:, 0].min() >= width
                or points[:, 1].min() >= height):
            return "bad shape", f"lies wholly outside the {width}x{height} image"
        if coco_mask.area(self.rle(width, height)) == 0:
            return "bad shape", "has zero area"
        return None

    def __str__(self):
        return "polygon" if len(self.parts) == 1 else f"polygon of {len(self.parts)} parts"


@dataclass
class Rle:
    """A COCO run-length encoding: {"size": [h, w], "counts": str (compressed) or list (uncompressed)}."""

    encoded: dict

    def rle(self, width, height):
        encoded = self.encoded
        if isinstance(encoded["counts"], list):
            return coco_mask.frPyObjects(encoded, *encoded["size"])
        return {"size": list(encoded["size"]), "counts": encoded["counts"].encode()
                if isinstance(encoded["counts"], str) else encoded["counts"]}

    def problem(self, width, height):
        if list(self.encoded["size"]) != [height, width]:
            return "mask size", f"is {self.encoded['size'][1]}x{self.encoded['size'][0]}, but its image is {width}x{height}"
        runs = rle_runs(self.encoded["counts"])
        if runs is None or min(runs, default=0) < 0 or sum(runs) != width * height:
            return "bad shape", f"has counts that are not runs covering the {width}x{height} image"
        if coco_mask.area(self.rle(width, height)) == 0:
            return "bad shape", "has zero area"
        return None

    def __str__(self):
        return "RLE mask"


def rle_runs(counts):
    """The run lengths of COCO RLE counts (a list, or the compressed text pycocotools writes), or None when
    counts are neither; checked here because pycocotools decodes runs without bounds checks."""
    if isinstance(counts, list):
        return counts if all(isinstance(v, int) and not isinstance(v, bool) for v in counts) else None
    runs, value, shift = [], 0, 0
    for char in counts:
        chunk = ord(char) - 48
        if not 0 <= chunk < 64:
            return None
        value |= (chunk & 0x1F) << shift
        shift += 5
        if chunk & 0x20:
            continue
        if chunk & 0x10:
            value -= 1 << shift
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
        value, shift = 0, 0
    return runs if shift == 0 else None


@dataclass
class MaskValue:
    """One instance of a mask PNG (Penn-Fudan): the pixels holding value."""

    path: Path
    value: int
    size: tuple  # (width, height) of the mask image

    def mask(self):
        with Image.open(self.path) as image:
            return (np.asarray(image) == self.value).astype(np.uint8)

    def rle(self, width, height):
        return coco_mask.encode(np.asfortranarray(self.mask()))

    def problem(self, width, height):
        if tuple(self.size) != (width, height):
            return "mask size", f"is {self.size[0]}x{self.size[1]}, but its image is {width}x{height}"
        return None

    def __str__(self):
        return f"mask {self.path.name} value {self.value}"


def instance_masks(shapes, width, height):
    """[N, height, width] uint8 masks of shapes (each Polygons, Rle or MaskValue)."""
    if not shapes:
        return np.zeros((0, height, width), np.uint8)
    return np.ascontiguousarray(coco_mask.decode([s.rle(width, height) for s in shapes]).transpose(2, 0, 1))


def instance_rles(shapes, width, height):
    """COCO RLEs (counts as text, as COCO JSON holds them) of shapes."""
    return [as_text(s.rle(width, height)) for s in shapes]


def as_text(rle):
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()
            if isinstance(rle["counts"], bytes) else rle["counts"]}


def mask_box(mask):
    """[x1, y1, x2, y2] around a mask's non-zero pixels (pixel edges), or None when it is empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return [float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1)]
