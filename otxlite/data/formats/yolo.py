"""YOLO / Ultralytics: one labels/*.txt per image with normalised `class cx cy w h` lines, or YOLO-seg
`class x1 y1 x2 y2 ...` polygons (a line may join several parts); names from data.yaml."""

import logging
import math
from pathlib import Path

from otxlite.core.files import read_text
from otxlite.data.formats.base import IMAGE_SUFFIXES, DataError, Sample, Split, class_index, images_in, parse_box
from otxlite.data.formats.shapes import Polygons

log = logging.getLogger("otxlite")


def load_yolo(spec):
    """Images from data-roots (labels in ann-files), or from ann-files alone: a folder or a .txt list of images,
    labels found as Ultralytics does (the last /images/ of the path becomes /labels/, suffix .txt)."""
    if not spec.names:
        raise DataError(f"{spec.ann_files}: YOLO labels number their classes; give the class names "
                        f"as 'names: [...]' in data.yaml.")
    if spec.data_roots:
        images = list_images(spec.data_roots)
        labels = [spec.ann_files / image.relative_to(spec.data_roots).with_suffix(".txt") for image in images]
    else:
        images = list_images(spec.ann_files)
        labels = [ultralytics_label_path(image) for image in images]
    samples = [read_label_file(image, label, spec.names) for image, label in zip(images, labels)]
    used = {c for s in samples for c in s.classes}
    unused = [n for n in spec.names.values() if n not in used]
    if unused and used:
        log.info("%s split: names without boxes are left out: %s", spec.name, ", ".join(unused))
    folders = {label.parent for label in labels}
    orphans = sorted({path for folder in folders if folder.is_dir() for path in folder.glob("*.txt")} - set(labels))
    return Split(spec.name, samples, [n for n in spec.names.values() if n in used], orphans=orphans,
                 unlabelled=tuple(image for image, label in zip(images, labels) if not label.exists()))


def list_images(source):
    """The images of a folder (recursively) or of a .txt list (paths relative to the list's folder)."""
    source = Path(source)
    if source.is_dir():
        images = images_in(source)
        if not images:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder. For YOLO, "
                            f"point to the images (or give the labels folder as ann-files and images as data-roots).")
        return images
    if source.is_file() and source.suffix == ".txt":
        lines = [line.strip() for line in read_text(source).splitlines() if line.strip()]
        return [source.parent / line for line in lines]
    raise DataError(f"{source}: not found (expected a folder of images or a .txt list of image paths).")


def ultralytics_label_path(image):
    parts = image.parts
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        return Path(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_label_file(image, path, names):
    """A sample with boxes as fractions of the image size; no label file means a background image."""
    sample = Sample(image, str(path), relative=True)
    if not path.exists() or path.is_dir():
        return sample  # read_text refuses a FIFO, socket or device, which would block
    lines = [(number, line.split()) for number, line in enumerate(read_text(path).splitlines(), 1) if line.split()]
    segmentation = any(len(values) >= 7 for _, values in lines)  # then a 5-value line is a polygon of 2 points
    for number, values in lines:
        record = f"{path} (line {number})"
        line = " ".join(values)
        shape = None
        if len(values) == 5 and segmentation:
            shape = Polygons([parse_numbers(values[1:], record)])  # data check reports it; training drops it
            box = parse_box(shape.box(), record)
        elif len(values) == 5:
            cx, cy, w, h = parse_box(values[1:], record)
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(values) >= 7 and len(values) % 2:  # a segmentation polygon: its bounding box, as Ultralytics does
            shape = Polygons([parse_numbers(values[1:], record)])
            box = parse_box(shape.box(), record)
        else:
            raise DataError(f"{record}: expected 'class cx cy w h' (5 values), got {len(values)}: '{line.strip()}'.")
        if max(abs(v) for v in box) > 1.5:
            raise DataError(f"{record}: coordinates {values[1:]} are not fractions of the image size (0-1), "
                            f"as YOLO labels must be.")
        sample.add(box, class_index(values[0], names, record), record, shape=shape)
    return sample


def parse_numbers(values, record):
    """A polygon's coordinates as floats, or a DataError naming the record: NaN and infinity are not
    coordinates (pycocotools would rasterise them without a check)."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise DataError(f"{record}: polygon {values} holds something that is not a number.") from None
    if not all(math.isfinite(v) for v in numbers):
        raise DataError(f"{record}: polygon {' '.join(values)} holds NaN or infinity; give finite fractions of the "
                        f"image size (0-1).")
    return numbers
