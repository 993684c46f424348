"""Standalone (otxlite's deploy runner, copied into each deploy.zip as run.py): detect objects with the package's model.

Usage: python run.py IMAGE_OR_FOLDER [--threshold T] [--json OUT]. Needs only openvino, numpy and pillow
(pip install -r requirements.txt). Prints one line per image; --json writes the detections as COCO results (image_id, file_name, category_id, category_name, bbox as x, y, w, h,
score, and for instance segmentation `segmentation` as COCO RLE), as `otxlite predict` does.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import openvino
from PIL import Image, ImageOps

MODEL = Path(__file__).resolve().parent / "model"
MASK_THRESHOLD = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Detector:
    """The packaged OpenVINO model: an RGB image in, boxes in its own pixels, scores and label ids out."""

    def __init__(self, folder=MODEL, device="CPU"):
        self.config = json.loads((folder / "config.json").read_text())
        self.labels = {label["id"]: label["name"] for label in
                       json.loads((folder / "label_schema.json").read_text())["labels"]}
        core = openvino.Core()  # f32 as otxlite runs it: the same detections as `otxlite predict`
        self.model = core.compile_model(core.read_model(folder / "openvino.xml"), device,
                                        {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, image):
        """HxWx3 uint8 RGB array -> boxes [N, 4] (x1, y1, x2, y2), scores [N], label ids [N], and for instance
        segmentation each box's mask probabilities [N, M, M] (paste_mask puts one into the image), else None.
        A model trained with tiling (config.json's "tiling") runs on the whole image and on its tiles, and the
        detections are merged as otxlite merges them (otxlite/tiling.py)."""
        settings = self.config.get("tiling")
        height, width = image.shape[:2]
        windows = [(0, 0, width, height)] + (tile_windows(height, width, settings) if settings else [])
        parts = [self.run(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
        return parts[0] if len(parts) == 1 else merged(parts, windows, height, width, settings["merge_iou"])

    def run(self, image):
        """The model on one image (or tile): its detections in that image's pixels."""
        tensor = np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32) / 255
        result = self.model([tensor])
        named = {name: result[output] for output in self.model.outputs for name in output.get_names()}
        boxes, scores, labels, masks = named["boxes"], named["scores"], named["labels"], named.get("masks")
        kept = labels.reshape(-1) > 0  # a background row is no detection
        masks = masks.reshape(len(kept), *masks.shape[-2:])[kept] if masks is not None else None
        return boxes.reshape(-1, 4)[kept], scores.reshape(-1)[kept], labels.reshape(-1)[kept], masks


def tile_windows(height, width, settings):
    """The tiles (x0, y0, x1, y1) of an image, as otxlite.models.tiling.windows cuts them."""
    size = settings["tile_size"]
    while len(tile_starts(width, size, settings["overlap"])) * len(tile_starts(height, size, settings["overlap"])) \
            > settings["max_tiles"]:
        size = -(-size * 11 // 10)
    if width <= size and height <= size:
        return []
    return [(x, y, min(x + size, width), min(y + size, height)) for y in tile_starts(height, size, settings["overlap"])
            for x in tile_starts(width, size, settings["overlap"])]


def tile_starts(length, size, overlap):
    if length <= size:
        return [0]
    step = max(1, round(size * (1 - overlap)))
    return list(range(0, length - size, step)) + [length - size]


def merged(parts, windows, height, width, iou_threshold):
    """Detections of the whole image (first) and its tiles in image pixels: a tile's detections within 2 px of one
    of its inner edges dropped, the rest merged by class-wise NMS (a box overlapping a better one of its class by
    IoU above iou_threshold goes), best score first."""
    kept = []
    for index, ((boxes, scores, labels, masks), (x0, y0, x1, y1)) in enumerate(zip(parts, windows)):
        boxes = boxes + np.array([x0, y0, x0, y0], np.float32)
        inner_cut = (((boxes[:, 0] <= x0 + 2) & (x0 > 0)) | ((boxes[:, 1] <= y0 + 2) & (y0 > 0))
                     | ((boxes[:, 2] >= x1 - 2) & (x1 < width)) | ((boxes[:, 3] >= y1 - 2) & (y1 < height)))
        chosen = ~inner_cut if index else np.ones(len(boxes), bool)
        kept.append((boxes[chosen], scores[chosen], labels[chosen], None if masks is None else masks[chosen]))
    boxes, scores, labels = (np.concatenate([part[i] for part in kept]) for i in range(3))
    masks = None if kept[0][3] is None else np.concatenate([part[3] for part in kept])
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        corner_low, corner_high = np.maximum(boxes[best, :2], boxes[rest, :2]), np.minimum(boxes[best, 2:], boxes[rest, 2:])
        overlap = np.prod(np.clip(corner_high - corner_low, 0, None), axis=1)
        areas = np.prod(boxes[rest, 2:] - boxes[rest, :2], axis=1) + np.prod(boxes[best, 2:] - boxes[best, :2])
        order = rest[(overlap / np.maximum(areas - overlap, 1e-9) <= iou_threshold) | (labels[rest] != labels[best])]
    keep = np.array(keep, np.int64)
    return boxes[keep], scores[keep], labels[keep], None if masks is None else masks[keep]


def paste_mask(mask, box, height, width):
    """One box's M x M mask probabilities as a bool height x width mask, pasted as torchvision's Mask R-CNN does:
    the mask padded by a pixel and the box widened by (M + 2) / M, resized bilinearly, thresholded."""
    size = mask.shape[-1]
    half = (box[2:] - box[:2]) * np.float32(0.5) * np.float32((size + 2) / size)
    center = (box[2:] + box[:2]) * np.float32(0.5)
    x1, y1, x2, y2 = np.concatenate([center - half, center + half]).astype(np.int64)  # toward zero, as torch
    resized = resize_bilinear(np.pad(mask, 1), max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))
    pasted = np.zeros((height, width), bool)
    top, bottom, left, right = max(y1, 0), min(y2 + 1, height), max(x1, 0), min(x2 + 1, width)
    if top < bottom and left < right:
        pasted[top:bottom, left:right] = resized[top - y1:bottom - y1, left - x1:right - x1] > MASK_THRESHOLD
    return pasted


def resize_bilinear(image, height, width):
    """A 2-D float32 array resized to height x width as torch's bilinear interpolation (align_corners=False)."""
    def taps(size, out):
        position = np.maximum((np.arange(out, dtype=np.float32) + np.float32(0.5)) * np.float32(size / out)
                              - np.float32(0.5), 0)
        low = position.astype(np.int64)
        return low, np.minimum(low + 1, size - 1), position - low

    (r0, r1, dy), (c0, c1, dx) = taps(image.shape[0], height), taps(image.shape[1], width)
    top = image[r0][:, c0] * (1 - dx) + image[r0][:, c1] * dx
    bottom = image[r1][:, c0] * (1 - dx) + image[r1][:, c1] * dx
    return top * (1 - dy)[:, None] + bottom * dy[:, None]


def coco_rle(mask):
    """A bool HxW mask as COCO's compressed RLE ({"size": [h, w], "counts": str}), as pycocotools writes it."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = ([0] if flat.size and flat[0] else []) + np.diff(bounds).tolist()
    text = []
    for i, count in enumerate(counts):
        value, more = count - (counts[i - 2] if i > 2 else 0), True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            text.append(chr((chunk | 0x20 if more else chunk) + 48))
    return {"size": list(mask.shape), "counts": "".join(text)}


def image_files(path):
    if path.is_file():
        return [path], path.parent
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), path


def read_image(file):
    """An image file (a path or a file object) as an upright RGB array: EXIF orientation applied, as otxlite does."""
    with Image.open(file) as image:
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))


def confidence_threshold(given, tuned):
    """given, or the model's tuned threshold when none is given (otxlite.core.thresholds' rule: a parity test holds
    the two together)."""
    if given is None:
        return tuned
    given = float(given)
    if not 0 <= given <= 1:
        raise SystemExit(f"--threshold {given:g}: give a confidence between 0 and 1.")
    return given


def kept(scores, threshold):
    """The indices of the scores above threshold, as otxlite.core.thresholds keeps them."""
    return np.flatnonzero(np.asarray(scores, dtype=np.float64).reshape(-1) > threshold)


def coco_records(detector, found, shape, threshold, image_id, file_name):
    """One image's detections (a Detector's answer) scoring above threshold, as COCO result records."""
    boxes, scores, labels, masks = found
    records = []
    for i in kept(scores, threshold):
        x1, y1, x2, y2 = boxes[i].tolist()
        records.append({"image_id": image_id, "file_name": file_name,
                        "category_id": int(labels[i]), "category_name": detector.labels[int(labels[i])],
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(scores[i]), 5),
                        **({"segmentation": coco_rle(paste_mask(masks[i], boxes[i], *shape))}
                           if masks is not None else {})})
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="an image or a folder of images")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the model's tuned one)")
    parser.add_argument("--json", type=Path, help="write the detections here as COCO results")
    args = parser.parse_args()
    detector = Detector()
    threshold = confidence_threshold(args.threshold, detector.config["confidence_threshold"])
    files, root = image_files(args.input)
    records = []
    for image_id, path in enumerate(files, 1):
        rgb = read_image(path)
        found = coco_records(detector, detector(rgb), rgb.shape[:2], threshold, image_id,
                             path.relative_to(root).as_posix())
        records += found
        print(f"{path}: {len(found)} detections scoring above {threshold:g}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
