"""What every annotation format loads into: samples (an image and its boxes) grouped into splits."""

import io
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from PIL import Image

from otxlite import OtxliteError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(OtxliteError):
    """A problem with one file (or record) of the user's dataset."""


@dataclass
class EmbeddedImage:
    """An encoded image held in a table (pandas, Hugging Face) rather than in a file of its own."""

    name: str  # where it came from, e.g. "cells.parquet (row 3)", or the file name the table recorded
    data: bytes = field(repr=False)

    def __str__(self):
        return self.name

    @property
    def stem(self):
        return PurePath(self.name).stem

    def open(self):
        return io.BytesIO(self.data)


def open_image(image):
    """A PIL image (not yet decoded) from a Path or an EmbeddedImage."""
    return Image.open(image.open() if isinstance(image, EmbeddedImage) else image)


@dataclass
class Sample:
    """One image (a Path or an EmbeddedImage) and its boxes (x1, y1, x2, y2 in pixels) with class names."""

    image: Path | EmbeddedImage
    source: str  # the annotation file (and record) the boxes came from, for messages
    boxes: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    width: int = 0
    height: int = 0
    relative: bool = False  # boxes are fractions of the image size (YOLO) until the image's size is read
    records: list = field(default_factory=list)  # where each box is written, for messages

    def add(self, box, name, record):
        self.boxes.append(box)
        self.classes.append(name)
        self.records.append(record)


@dataclass
class SplitSpec:
    """Where one split's annotations and images are, and how to read them (the keys of a data.yaml split)."""

    name: str
    ann_files: Path
    data_roots: Path | None = None
    format: str | None = None
    subset: str | None = None  # which split of a multi-split source (VOC root, Hugging Face) to read; default: name
    names: list | None = None  # class names for formats that number classes (YOLO, integer labels)
    columns: dict | None = None  # table formats: {role: column name} where detection guesses wrong
    bbox_format: str | None = None  # "xyxy" or "xywh" where a format allows both
    image_list: Path | None = None  # keep only the images listed in this file (one name, stem or path a line)


@dataclass
class Split:
    name: str
    samples: list
    class_order: list | None  # the order the format gives classes (COCO ids, YOLO names); None: first appearance


def parse_box(values, record):
    """Four finite floats, or a DataError naming the record."""
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):  # not a sequence, or not numbers
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise DataError(f"{record}: box {list(values) if isinstance(values, tuple) else values} "
                        f"is not four finite numbers.")
    return box


def images_in(folder):
    """The image files under folder, recursively, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def first_appearance(samples):
    return list(dict.fromkeys(c for s in samples for c in s.classes))


def class_name(value, names, record):
    """A class given by name, or by its index into names when names are given."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if value is not None else ""
    if not text or text.lower() == "nan":
        raise DataError(f"{record}: the box has no class.")
    if names is None or text in names:
        return text
    try:
        index = int(text)
    except ValueError:
        raise DataError(f"{record}: class '{text}' is not in names ({', '.join(names)}).") from None
    if not 0 <= index < len(names):
        raise DataError(f"{record}: class index {index} is outside names (0-{len(names) - 1}: {', '.join(names)}). "
                        f"Fix the label or add the class to names.")
    return names[index]
