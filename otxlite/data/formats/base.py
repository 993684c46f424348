"""What every annotation format loads into: samples (an image and its boxes) grouped into splits."""

import io
import logging
import math
import threading
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np
from PIL import Image, ImageFile, ImageOps

from otxlite.core.errors import DataError
from otxlite.core.files import is_regular

log = logging.getLogger("otxlite")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
FILE_ENDINGS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}
TOLERANT_DECODING = threading.Lock()  # PIL's LOAD_TRUNCATED_IMAGES is a global switch


def open_image(image):
    """A PIL image (not yet decoded) from a Path or an EmbeddedImage.

    An image over PIL's decompression-bomb limit is a DataError naming the file.
    """
    if not isinstance(image, EmbeddedImage) and Path(image).exists() and not is_regular(image):
        raise DataError(f"{image}: not a regular file (a FIFO, socket or device); it cannot be an image.")
    try:
        return Image.open(image.open() if isinstance(image, EmbeddedImage) else image)
    except Image.DecompressionBombError as err:
        raise DataError(f"{image}: too large to decode safely ({err}). Downscale the image.") from None


def oriented_size(image):
    """(width, height) of an opened image as viewers show it: turned upright by its EXIF orientation."""
    width, height = image.size
    if image.getexif().get(ImageOps.ExifTags.Base.Orientation) in TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def decode_image(image, tolerate_truncation=True):
    """The image as annotation tools show it: RGB uint8 HxWx3, upright by its EXIF orientation.

    16-bit and 32-bit integer images are scaled by their type's range (65535 -> 255), float images from
    0..1, or from their own min..max when outside it; grayscale, palette and alpha images become RGB.
    A truncated file raises PIL's OSError unless tolerate_truncation, when its missing end is grey.
    """
    try:
        picture = load_pixels(image)
    except OSError as err:
        if not tolerate_truncation or "truncated" not in str(err):
            raise
        with TOLERANT_DECODING:
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                picture = load_pixels(image)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
    return np.asarray(picture)


def decode_reporting_truncation(image):
    """(RGB array, None), or for a truncated file (the array with its missing end grey, PIL's message)."""
    try:
        return decode_image(image, tolerate_truncation=False), None
    except OSError as err:
        if "truncated" not in str(err):
            raise
        return decode_image(image), str(err)


def load_pixels(image):
    with open_image(image) as opened:
        opened.load()
        upright = ImageOps.exif_transpose(opened)
    if upright.mode in ("I", "F") or upright.mode.startswith("I;16"):
        upright = Image.fromarray(to_8bit(np.asarray(upright)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's advice on palette transparency: converting to RGB is our intent
        return upright.convert("RGB")


def to_8bit(array):
    """A single-channel integer or float array as uint8, scaled by its range rather than clamped:
    integers by 0..65535, floats by 0..1, either by its own min..max when it leaves that range."""
    floating = np.issubdtype(array.dtype, np.floating)
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = 0.0, 1.0 if floating else 65535.0
    if array.size and (array.min() < low or array.max() > high):
        low, high = float(array.min()), float(array.max())
    span = max(high - low, 1e-12)
    return np.clip(np.round((array - low) * 255 / span), 0, 255).astype(np.uint8)


def ends_early(image):
    """True when a JPEG or PNG file lacks its end marker (cheap: reads the last bytes only)."""
    name = str(image)
    ending = FILE_ENDINGS.get(PurePath(name).suffix.lower())
    if ending is None:
        return False
    if isinstance(image, EmbeddedImage):
        tail = image.data[-1024:]
    else:
        with open(image, "rb") as file:
            file.seek(0, 2)
            file.seek(max(file.tell() - 1024, 0))
            tail = file.read()
    return ending not in tail


@dataclass
class Sample:
    """One image (a Path or an EmbeddedImage) and its boxes (x1, y1, x2, y2 in pixels) with class names, and
    per box the instance's shape where the format gives one (formats.shapes: Polygons, Rle, MaskValue; else None).

    An ignored box is a region COCO marks `iscrowd` or VOC `difficult`: never trained on, and a detection
    on it is neither a true nor a false positive.
    """

    image: Path | EmbeddedImage
    source: str  # the annotation file (and record) the boxes came from, for messages
    boxes: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    width: int = 0
    height: int = 0
    relative: bool = False  # boxes are fractions of the image size (YOLO) until the image's size is read
    records: list = field(default_factory=list)  # where each box is written, for messages
    ignored: list = field(default_factory=list)  # per box: a crowd or difficult region
    declared_size: tuple | None = None  # (width, height) the annotation states, compared with the image's
    shapes: list = field(default_factory=list)  # per box: its instance shape, or None
    window: tuple | None = None  # a tile (x0, y0, x1, y1) of the image: boxes, width and height are the tile's

    def add(self, box, name, record, ignored=False, shape=None):
        self.boxes.append(box)
        self.classes.append(name)
        self.records.append(record)
        self.ignored.append(bool(ignored))
        self.shapes.append(shape)


@dataclass
class SplitSpec:
    """Where one split's annotations and images are, and how to read them (the keys of a data.yaml split)."""

    name: str
    ann_files: Path
    data_roots: Path | None = None
    format: str | None = None
    subset: str | None = None  # which split of a multi-split source (VOC root, Hugging Face) to read; default: name
    names: dict | None = None  # {class index: name} for formats that number classes (YOLO, integer labels)
    columns: dict | None = None  # table formats: {role: column name} where detection guesses wrong
    bbox_format: str | None = None  # "xyxy" or "xywh" where a format allows both
    image_list: Path | None = None  # keep only the images listed in this file (one name, stem or path a line)

    def absolute(self):
        """The same spec with absolute paths, for a process with another working directory."""
        return replace(self, **{key: Path(getattr(self, key)).absolute()
                                for key in ("ann_files", "data_roots", "image_list") if getattr(self, key)})


@dataclass
class Split:
    name: str
    samples: list
    class_order: list | None  # the order the format gives classes (COCO ids, YOLO names); None: first appearance
    declared: list | None = None  # every class the file declares, used or not (COCO categories)
    orphans: list = field(default_factory=list)  # annotation files (labels, masks) whose image is not there
    unlabelled: tuple = ()  # the images without an annotation file of their own (read as background)


def read_xml(path, missing):
    """The root element of the XML file at path, or a DataError naming it; missing: what a missing file means."""
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: unreadable XML ({err}). Fix or remove the file.") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the annotation file ({err.strerror or err}).") from None


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
    """The image files under folder, recursively, sorted. Entries with an image's name that are not regular files
    (a FIFO, socket or device, which would block or never end, or a dangling link) are skipped with a counted
    warning naming them."""
    named = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    others = [p for p in named if not is_regular(p) and not p.is_dir()]
    if others:
        log.warning("%s: skipped %d entr%s named like images that %s not regular files (FIFO, socket, device or "
                    "dangling link): %s", folder, len(others), "y" if len(others) == 1 else "ies",
                    "is" if len(others) == 1 else "are", ", ".join(str(p) for p in others[:5]) +
                    (" ..." if len(others) > 5 else ""))
    return [p for p in named if is_regular(p)]


def first_appearance(samples):
    return list(dict.fromkeys(c for s in samples for c in s.classes))


def class_index(text, names, record):
    """The name of the class numbered text in names ({index: name}), as YOLO labels number classes: `3` or `3.0`
    (as Ultralytics reads it), never a name, so numeric names (`names: [5, 7]`) are never taken for indices."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        raise DataError(f"{record}: class '{text}' is not a class index (YOLO labels number their classes 0, 1, ...).")
    if int(number) not in names:
        known = ", ".join(f"{i}: {n}" for i, n in names.items())
        raise DataError(f"{record}: class index {int(number)} is not in names ({known}). "
                        f"Fix the label or add the class to names.")
    return names[int(number)]


def class_name(value, names, record):
    """A class given by name, or by its index into names ({index: name}) when names are given."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if value is not None else ""
    if not text or text.lower() == "nan":
        raise DataError(f"{record}: the box has no class.")
    if names is None or text in names.values():
        return text
    try:
        index = int(text)
    except ValueError:
        raise DataError(f"{record}: class '{text}' is not in names ({', '.join(names.values())}).") from None
    if index not in names:
        known = ", ".join(f"{i}: {n}" for i, n in names.items())
        raise DataError(f"{record}: class index {index} is not in names ({known}). "
                        f"Fix the label or add the class to names.")
    return names[index]
