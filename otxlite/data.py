"""Datasets: where the splits are (data.yaml), checking and cleaning them, label schemas, and torch loading."""

import colorsys
import logging
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from typing import Literal

import numpy as np
import pydantic
import torch
import yaml
from PIL import UnidentifiedImageError
from torchvision import tv_tensors
from pydantic import BaseModel, ConfigDict, Field, field_validator

from otxlite import OtxliteError
from otxlite.augment import to_model_scale
from otxlite.files import label_names, read_text, read_yaml, write_atomic
from otxlite.formats import FORMATS, DataError, Sample, SplitSpec, read_split
from otxlite.tasks import TASKS
from otxlite.formats.shapes import Polygons, instance_masks
from otxlite.formats.base import decode_image, decode_reporting_truncation, ends_early, first_appearance, open_image, oriented_size

__all__ = ["DataError", "Sample", "SplitSpec", "DetectionDataset", "GroupedBatchSampler", "check_split",
           "hold_out_val", "label_schema", "load_split", "load_splits", "make_loader", "read_data_yaml",
           "require_splits", "split_specs", "to_ray_dataset", "write_data_yaml"]
log = logging.getLogger("otxlite")
SPLITS = ("train", "val", "test")
SPEC_KEYS = {"ann-files": "ann_files", "data-roots": "data_roots", "format": "format", "subset": "subset",
             "names": "names", "columns": "columns", "bbox-format": "bbox_format", "image-list": "image_list"}
PATH_KEYS = ("ann-files", "data-roots", "image-list")
CACHE_BYTES = 512 * 2 ** 20  # decoded training images (at the model's scale) each DataLoader worker keeps
MIN_SHAPE_IOU = 0.5  # a box and its own polygon or mask overlapping less than this disagree
CLIP_TOLERANCE = 1.0  # px a box may reach outside its image (rounding, 1-based VOC) before clipping is worth a warning


# ---------------------------------------------------------------- where the data is


class SplitEntry(BaseModel):
    """One split of a data.yaml, as written (keys with dashes)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)
    ann_files: str | None = Field(None, alias="ann-files")
    data_roots: str | None = Field(None, alias="data-roots")
    format: Literal[tuple(FORMATS)] | None = None
    subset: str | None = None
    names: list[str | int] | dict[int, str | int] | None = None  # parse_names checks them
    columns: dict[str, str] | None = None
    bbox_format: Literal["xyxy", "xywh"] | None = Field(None, alias="bbox-format")
    image_list: str | None = Field(None, alias="image-list")

    @field_validator("format", "bbox_format", mode="before")
    @classmethod
    def lower_case(cls, value):
        return value.lower() if isinstance(value, str) else value


def checked_entry(entry, path, name):
    """A data.yaml split entry as a SplitEntry, or one error naming the file, the split and the key."""
    if not isinstance(entry, dict):
        raise OtxliteError(f"{path}: split '{name}' should be a mapping such as "
                           f"{{ann-files: ..., data-roots: ...}}, not {entry!r}.")
    try:
        return SplitEntry.model_validate(entry)
    except pydantic.ValidationError as err:
        problem = err.errors()[0]
        key = problem["loc"][0]
        if problem["type"] == "extra_forbidden":
            raise OtxliteError(f"{path}: split '{name}' has an unknown key '{key}'; use {', '.join(SPEC_KEYS)}.") from None
        raise OtxliteError(f"{path}: split '{name}', {key}: {problem['msg'].lower()} "
                           f"(got {problem['input']!r}).") from None


def read_data_yaml(path):
    """{split name: SplitSpec} from an OTX-style data.yaml (or an Ultralytics one); paths are from its folder."""
    path = Path(path).absolute()
    config = read_yaml(path)
    if isinstance(config, dict) and "data" not in config and "names" in config and "train" in config:
        return ultralytics_specs(path, config)
    splits = config.get("data") if isinstance(config, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise OtxliteError(f"{path}: expected a 'data:' mapping with train/val/test splits (see data.yaml.example).")
    unknown = set(config) - {"data", "names"}
    if unknown:
        raise OtxliteError(f"{path}: unknown top-level keys {sorted(unknown)}; use data (and names).")
    names = parse_names(config.get("names"), path)
    specs = {}
    for name, entry in splits.items():
        entry = checked_entry(entry, path, name)
        values = {attribute: getattr(entry, attribute) for attribute in SPEC_KEYS.values()}
        for key in PATH_KEYS:
            attribute = SPEC_KEYS[key]
            values[attribute] = values[attribute] and path.parent / values[attribute]
        values["names"] = parse_names(entry.names, path) or names
        specs[str(name)] = spec_for(str(name), path, **values)
    return specs


def spec_for(name, source, ann_files=None, data_roots=None, **values):
    """A SplitSpec; with data-roots alone, the annotations are found from the folder's layout."""
    if ann_files is None:
        if data_roots is None:
            raise OtxliteError(f"{source}: split '{name}' needs 'ann-files' or 'data-roots' (or both).")
        return root_spec(name, Path(data_roots), source, **values)
    return SplitSpec(name, Path(ann_files), Path(data_roots) if data_roots else None, **values)


def root_spec(name, root, source, **values):
    """The split of a dataset root whose layout says what it is: a VOC root (Annotations/), a COCO export
    folder (one .json, e.g. Roboflow's _annotations.coco.json, beside the images), or a YOLO root
    (images/ and labels/)."""
    if not root.is_dir():
        raise DataError(f"{root}: not found (data-roots of split '{name}' in {source}).")
    if (root / "Annotations").is_dir():
        return SplitSpec(name, root, None, **values)
    jsons = sorted(root.glob("*.json"))
    if len(jsons) == 1:
        return SplitSpec(name, jsons[0], root, **{**values, "format": values.get("format") or "coco"})
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return SplitSpec(name, root / "labels", root / "images", **{**values, "format": values.get("format") or "yolo"})
    raise DataError(f"{root}: cannot tell the dataset layout from data-roots alone (split '{name}' in {source}): expected "
                    f"Annotations/ (VOC), one .json file (COCO), or images/ and labels/ (YOLO). "
                    f"Give 'ann-files' too.")


def ultralytics_specs(path, config):
    """Splits of an Ultralytics data.yaml: `path` (the root, relative to this file), train/val/test, names."""
    root_value = config.get("path") or "."
    if not isinstance(root_value, (str, int, float)) or isinstance(root_value, bool):
        raise OtxliteError(f"{path}: 'path' should be the dataset's root folder, not {root_value!r}.")
    root = path.parent / str(root_value)
    names = parse_names(config["names"], path)
    specs = {}
    for name in SPLITS:
        source = config.get(name)
        if isinstance(source, list):
            if len(source) != 1:
                raise OtxliteError(f"{path}: split '{name}' lists {len(source)} folders; otxlite reads one folder "
                                   f"or one .txt list of images per split.")
            source = source[0]
        if source is not None and (not isinstance(source, (str, int, float)) or isinstance(source, bool)):
            raise OtxliteError(f"{path}: '{name}' should be an images folder or a .txt list, not {source!r}.")
        if source not in (None, ""):
            specs[name] = SplitSpec(name, root / str(source), format="yolo", names=names)
    if "train" not in specs:
        raise OtxliteError(f"{path}: an Ultralytics data.yaml needs 'train' (images folder or .txt list).")
    return specs


def parse_names(names, path):
    """Class names as {index: name}: from a YAML list (indices from 0), or a mapping such as Ultralytics'
    {0: person, 2: car} (indices may have gaps, as COCO's category ids do); no name twice."""
    if names is None:
        return None
    if isinstance(names, list):
        names = dict(enumerate(names))
    valid = isinstance(names, dict) and names and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 and isinstance(n, (str, int)) and str(n).strip()
        for i, n in names.items())
    if not valid:
        raise OtxliteError(f"{path}: 'names' should be a list of class names, or a mapping of class indices to "
                           f"names such as {{0: person, 2: car}}.")
    names = {i: str(n) for i, n in sorted(names.items())}
    repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if repeated:
        raise OtxliteError(f"{path}: 'names' repeats {', '.join(repeated)}; two classes cannot share a name.")
    return names


def split_specs(data=None, **paths):
    """Splits from --data and/or --<split>-ann-files/--<split>-data-roots (the flags win)."""
    specs = read_data_yaml(data) if data else {}
    for name in SPLITS:
        ann_files, data_roots = paths.get(f"{name}_ann_files"), paths.get(f"{name}_data_roots")
        if ann_files or data_roots:
            specs[name] = spec_for(name, f"--{name}-ann-files", ann_files and Path(ann_files).absolute(),
                                   data_roots and Path(data_roots).absolute())
    return specs


def in_split_order(names):
    """train, val, test first, then any other split names as given."""
    return [n for n in SPLITS if n in names] + [n for n in names if n not in SPLITS]


def require_splits(specs, *names):
    missing = [n for n in names if n not in specs]
    if missing:
        raise OtxliteError(f"No {' or '.join(missing)} split given: add it to data.yaml or pass "
                           f"--{missing[0]}-ann-files and --{missing[0]}-data-roots.")


def write_data_yaml(specs, path):
    """A data.yaml that reads back as specs: paths inside its folder relative to it, others absolute."""
    folder = Path(path).parent.absolute()

    def written(value):
        value = Path(value).absolute()
        return str(value.relative_to(folder)) if value.is_relative_to(folder) else str(value)

    splits = {}
    for name, spec in specs.items():
        entry = {key: getattr(spec, attribute) for key, attribute in SPEC_KEYS.items()}
        splits[name] = {k: written(v) if k in PATH_KEYS else v for k, v in entry.items() if v is not None}
    text = yaml.safe_dump({"data": splits}, sort_keys=False)
    write_atomic(path, lambda f: f.write(text.encode()))


def hold_out_val(specs, fraction, seed, output):
    """Hold out a seeded fraction of train as val; both saved as image lists in OUTPUT/data.yaml, returned as specs."""
    if "val" in specs:
        raise OtxliteError("--val-split: the data already has a val split. Drop --val-split, or the val split.")
    require_splits(specs, "train")
    images = [str(s.image) for s in read_listed(specs["train"]).samples]
    count = round(len(images) * fraction)
    if not 0 < fraction < 1 or not 0 < count < len(images):
        raise OtxliteError(f"--val-split {fraction}: the train split has {len(images)} images, so that holds out "
                           f"{count}. Give a fraction between 0 and 1 that leaves images on both sides.")
    held_out = set(random.Random(seed).sample(range(len(images)), count))
    output = Path(output)
    parts = {"train": [i for n, i in enumerate(images) if n not in held_out],
             "val": [i for n, i in enumerate(images) if n in held_out]}
    train = specs["train"]
    saved = dict(specs)
    for name, part in parts.items():
        listing = output / "splits" / f"{name}.txt"
        write_atomic(listing, lambda f, part=part: f.write(("\n".join(part) + "\n").encode()))
        saved[name] = replace(train, name=name, subset=train.subset or "train", image_list=listing)
    write_data_yaml({n: saved[n] for n in in_split_order(saved)}, output / "data.yaml")
    log.info("Held out %d of %d train images as val (--val-split %g, seed %d). Later stages see the same split "
             "with --data %s", count, len(images), fraction, seed, output / "data.yaml")
    return read_data_yaml(output / "data.yaml")


# ---------------------------------------------------------------- checking and cleaning


@dataclass
class Problem:
    """One thing wrong in a split: where it is, what it is, and whether training would fail on it."""

    kind: str
    where: str
    message: str
    fatal: bool


def read_listed(spec):
    """The split as its files state it, restricted to its image-list (in the list's order) when it has one."""
    split = read_split(spec)
    if spec.image_list is None:
        return split
    index = {}
    for sample in split.samples:
        for key in {str(sample.image), sample.image.name, sample.image.stem}:
            index.setdefault(key, []).append(sample)
    lines = [line.strip() for line in read_text(spec.image_list).splitlines()]
    kept = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        matches = index.get(line, [])
        if len(matches) != 1:
            problem = "is not among" if not matches else "matches several images of"
            raise DataError(f"{spec.image_list} (line {number}): '{line}' {problem} the annotations of split "
                            f"'{spec.name}' ({spec.ann_files}). Use the image's path or a unique file name.")
        kept.append(matches[0])
    return replace(split, samples=kept)


def check_split(spec, known_classes=None, decode=False, masks=False):
    """(split, problems): the split read, checked against its images, and cleaned.

    Boxes are made absolute, clipped to the image (a problem when past CLIP_TOLERANCE), and dropped when left
    with zero area or when they repeat another box of the same class; each change is a non-fatal problem, as
    are a size the annotation declares that differs from the upright image and a truncated image that still
    decodes. A missing, unreadable or oversized image, a class outside known_classes and an empty split are
    fatal. decode=True decodes every image in full. masks=True (instance segmentation) checks each instance's
    shape: a box without one is fatal, a shape that cannot be a mask (a polygon of fewer than 3 points, zero
    area or outside the image) drops its instance, and a mask of another size than its image is fatal.
    masks=None checks the shapes that instances carry in the same way without requiring one (data check and
    convert); masks=False (detection) leaves shapes unread.
    """
    split = read_listed(spec)
    if not split.samples:
        return replace(split, class_order=[]), [Problem("empty split", str(spec.ann_files), f"{spec.ann_files}: split '{spec.name}' "
                                 f"has no images.", True)]
    problems = [Problem("orphan", str(path), f"{path}: an annotation file without its image (none of that name in "
                        f"the images); not read. Add the image, or remove the file.", False) for path in split.orphans]
    for sample in split.samples:
        problem = read_image_size(sample, decode)
        if problem:
            problems.append(problem)
            if problem.fatal:
                continue
        if sample.declared_size and sample.declared_size != (sample.width, sample.height):
            problems.append(Problem("size", sample.source, f"{sample.source}: declares a "
                                    f"{sample.declared_size[0]}x{sample.declared_size[1]} image, but {sample.image} "
                                    f"is {sample.width}x{sample.height} upright (EXIF orientation applied, as "
                                    f"annotation tools show it); boxes are read on the upright image.", False))
        kept, seen = [], set()
        for box, name, record, ignored, shape in zip(sample.boxes, sample.classes, sample.records, sample.ignored,
                                                     sample.shapes):
            if not str(name).strip():
                problems.append(Problem("empty class name", record, f"{record}: the class name is empty; every class "
                                        f"needs a name (fix the category or names entry).", True))
                continue
            if known_classes is not None and name not in known_classes:
                problems.append(Problem("unknown class", record, f"{record}: class '{name}' never appears in the "
                                        f"training split (training classes: {', '.join(known_classes)}). "
                                        f"Fix the label or add it to train.", True))
                continue
            if sample.relative:
                box = [box[0] * sample.width, box[1] * sample.height, box[2] * sample.width, box[3] * sample.height]
                shape = shape and shape.scaled(sample.width, sample.height)
            if masks or (masks is None and shape is not None):
                problem = shape_problem(shape, record, ignored, sample) or box_disagrees(shape, box, record, sample)
                if problem:
                    problems.append(problem)
                    if problem.kind != "box and shape disagree":
                        continue
            inside = [min(max(box[0], 0), sample.width), min(max(box[1], 0), sample.height),
                      min(max(box[2], 0), sample.width), min(max(box[3], 0), sample.height)]
            shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                problems.append(Problem("zero area", record, f"{record}: box {shown} has zero area (or lies wholly "
                                        f"outside the {sample.width}x{sample.height} image); dropped.", False))
                continue
            if max(abs(a - b) for a, b in zip(inside, box)) > CLIP_TOLERANCE:
                problems.append(Problem("clipped", record, f"{record}: box {shown} reaches outside the "
                                        f"{sample.width}x{sample.height} image; clipped.", False))
            if (name, *inside) in seen:
                problems.append(Problem("duplicate", record, f"{record}: box {shown} ({name}) repeats an earlier "
                                        f"box of the image; dropped.", False))
                continue
            seen.add((name, *inside))
            kept.append((inside, name, record, ignored, shape))
        sample.boxes, sample.classes, sample.records, sample.ignored, sample.shapes = \
            (list(v) for v in zip(*kept)) if kept else ([], [], [], [], [])
        sample.relative = False
    present = {c for s in split.samples for c, ignored in zip(s.classes, s.ignored) if not ignored}
    order = [c for c in first_appearance(split.samples) if c in present] if split.class_order is None else \
        [c for c in split.class_order if c in present]
    return replace(split, class_order=order), problems


def shape_problem(shape, record, ignored, sample):
    """The Problem with an instance's shape for instance segmentation, or None."""
    if shape is None:
        return None if ignored else Problem("no mask", record, f"{record}: the instance has a box but no mask "
                                            f"(polygon, RLE or mask image); instance segmentation needs one for "
                                            f"every instance. Add it, or train a detection template.", True)
    found = shape.problem(sample.width, sample.height)
    if found is None:
        return None
    kind, why = found
    if kind == "mask size":
        return Problem(kind, record, f"{record}: the {shape} {why}. Masks must match their image.", True)
    return Problem(kind, record, f"{record}: the {shape} {why}; instance dropped.", False)


def box_disagrees(shape, box, record, sample):
    """A warning Problem when a box and its instance's shape (checked) overlap with IoU under MIN_SHAPE_IOU: one of
    them is on another object, or in other units; None when they agree (or there is no shape)."""
    if not isinstance(shape, Polygons):  # polygons only: their box needs no rasterising (no native code)
        return None
    around = [float(v) for v in shape.box()]
    w, h = around[2] - around[0], around[3] - around[1]
    overlap = max(0.0, min(box[2], around[2]) - max(box[0], around[0])) * \
        max(0.0, min(box[3], around[3]) - max(box[1], around[1]))
    union = (box[2] - box[0]) * (box[3] - box[1]) + w * h - overlap
    iou = overlap / union if union > 0 else 0.0
    if iou >= MIN_SHAPE_IOU:
        return None
    shown = ", ".join(f"{v:g}" for v in box)
    return Problem("box and shape disagree", record, f"{record}: box [{shown}] and its {shape} overlap at IoU "
                   f"{iou:.2f} (the {shape} spans [{', '.join(f'{v:g}' for v in around)}]); one is off. Kept as "
                   f"given: the box trains detection, the {shape} the mask.", False)


def read_image_size(sample, decode):
    """Set sample.width/height from the image as viewers show it (EXIF orientation applied).

    Returns a Problem when the image is missing, unreadable or oversized (fatal), or truncated but
    decodable (a warning: its missing end is filled grey); otherwise None.
    """
    try:
        with open_image(sample.image) as image:
            sample.width, sample.height = oriented_size(image)
        if decode or ends_early(sample.image):
            _, truncated = decode_reporting_truncation(sample.image)
            if truncated:
                return Problem("truncated", str(sample.image), f"{sample.image}: the file ends early ({truncated}); "
                               f"decoded with its missing part grey.", False)
    except FileNotFoundError:
        return Problem("missing image", sample.source, f"{sample.source}: image {sample.image} not found. "
                       f"Check data-roots.", True)
    except DataError as err:
        return Problem("unreadable image", str(sample.image), str(err), True)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return Problem("unreadable image", str(sample.image), f"{sample.image}: unreadable image ({err}). "
                       f"Replace or remove it.", True)
    return None


WARNINGS = {"clipped": "clipped {count} box(es) that reached outside their image",
            "zero area": "dropped {count} box(es) with zero area (or wholly outside the image)",
            "duplicate": "dropped {count} duplicate box(es)",
            "bad shape": "dropped {count} instance(s) whose shape cannot be a mask",
            "truncated": "{count} truncated image(s) decoded with their missing end grey",
            "orphan": "{count} annotation file(s) without their image, not read",
            "box and shape disagree": "{count} box(es) far from their own polygon or mask (IoU < 0.5), kept",
            "size": "{count} image(s) whose size differs from the one their annotation declares"}


def load_split(spec, known_classes=None, masks=False):
    """Load, check and clean one split: the first fatal problem is an error; the others are counted warnings.
    masks: the task needs instance masks (see check_split)."""
    split, problems = check_split(spec, known_classes, masks=masks)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        more = f" ({len(fatal) - 1} more problem(s) like it: `otxlite data check` lists them all.)" if len(fatal) > 1 else ""
        raise DataError(fatal[0].message + more)
    for kind, template in WARNINGS.items():
        found = [p.where for p in problems if p.kind == kind]
        if found:
            log.warning("%s split: %s: %s", spec.name, template.format(count=len(found)),
                        "; ".join(found[:5]) + (" ..." if len(found) > 5 else ""))
    return split


def declared_classes(spec, split):
    """The classes a split declares whether it uses them or not (data.yaml names, COCO categories), or None."""
    return list(spec.names.values()) if spec.names else split.declared


# ---------------------------------------------------------------- label schema


def label_schema(class_names, task="detection"):
    """The label schema for classes in order: ids from 1 (0 is background), a distinct colour each."""
    return {"task": task,
            "labels": [{"id": i + 1, "name": name, "color": label_color(i)} for i, name in enumerate(class_names)]}


def label_color(index):
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def load_splits(specs, schema=None, task="detection"):
    """Load every split for task (a name in tasks.TASKS, or None: any task, shapes checked where given); the
    label schema comes from train unless one is given (e.g. by a model).

    When train declares its classes (data.yaml `names`, COCO categories), classes that only val or test hold are
    kept, in the declared order, with a warning that the model cannot learn them; otherwise such a class is an
    error.
    """
    masks = TASKS[task].masks if task else None
    splits = {}
    if schema is None:
        require_splits(specs, "train")
        train = splits["train"] = load_split(specs["train"], masks=masks)
        if not train.class_order:
            raise DataError(f"{specs['train'].ann_files}: the training split has no boxes.")
        declared = declared_classes(specs["train"], train)
        known = declared or train.class_order
    else:
        known = label_names(schema)
    for name, spec in specs.items():
        if name not in splits:
            splits[name] = load_split(spec, known_classes=known, masks=masks)
    if schema is None:
        present = {c for split in splits.values() for s in split.samples for c in s.classes}
        order = [c for c in known if c in present and (c in train.class_order or declared)]
        unlearned = [c for c in order if c not in train.class_order]
        if unlearned:
            log.warning("Classes in val or test but not in the training split, kept as train declares them; "
                        "the model cannot learn them: %s", ", ".join(unlearned))
        schema = label_schema(order, task or "detection")
    return splits, schema


# ---------------------------------------------------------------- torch side


class DetectionDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors with torchvision detection targets, augmented by pipeline when given.

    Items travel as tv_tensors (Image, BoundingBoxes) through the pipeline and leave it as plain tensors.
    Training items are asked for as (index, epoch) by GroupedBatchSampler; their randomness is seeded from
    (seed, epoch, index) alone, so it does not depend on which DataLoader worker decodes them, on the number
    of workers, or on whether the run was resumed. Ignored (crowd, difficult) regions are not training targets.
    """

    def __init__(self, samples, schema, pipeline=None, input_size=None, seed=0, masks=False):
        self.samples, self.masks = samples, masks
        self.label_ids = {label["name"]: label["id"] for label in schema["labels"]}
        self.pipeline, self.seed = pipeline, seed
        self.context = PipelineContext(self.scaled, len(samples), input_size) if pipeline else None
        self.cache, self.cached_bytes = {}, 0

    def scaled(self, index):
        """Sample index at the model's input scale (the first step of every pipeline), kept in memory up to
        CACHE_BYTES per worker: multi-image transforms read three more images per item."""
        if index in self.cache:
            return self.cache[index]
        item = to_model_scale(*self.load(index), self.context, isotropic=True)
        size = item[0].numel() + (item[1]["masks"].numel() if self.masks else 0)
        if self.cached_bytes + size <= CACHE_BYTES:
            self.cache[index] = item
            self.cached_bytes += size
        return item

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        """Sample index as (tv_tensors.Image, {"boxes": tv_tensors.BoundingBoxes, "labels": tensor}), with
        "masks" (tv_tensors.Mask, one uint8 mask per box) when the dataset has masks; a tile's pixels only."""
        sample = self.samples[index]
        try:
            image = torch.from_numpy(decode_image(sample.image).copy()).permute(2, 0, 1)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{sample.image}: cannot decode image ({err}). Replace or remove it.") from None
        trained = [i for i, ignored in enumerate(sample.ignored) if not ignored]
        x0, y0, x1, y1 = sample.window or (0, 0, image.shape[2], image.shape[1])
        boxes = torch.tensor([sample.boxes[i] for i in trained], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_ids[sample.classes[i]] for i in trained], dtype=torch.int64)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(y1 - y0, x1 - x0)),
                  "labels": labels}
        if self.masks:
            shapes = [sample.shapes[i] for i in trained]
            masks = torch.from_numpy(instance_masks(shapes, *image.shape[:0:-1]))
            target["masks"] = tv_tensors.Mask(masks[:, y0:y1, x0:x1])
        return tv_tensors.Image(image[:, y0:y1, x0:x1]), target

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, target = self.scaled(index) if self.pipeline else self.load(index)
        if self.pipeline:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                image, target = self.pipeline(image, target, self.context)
        return image.as_subclass(torch.Tensor), {**{k: v.as_subclass(torch.Tensor) for k, v in target.items()},
                                                 "image_id": index}


@dataclass
class PipelineContext:
    """What multi-image transforms ask of the dataset: other items, their count, and the model's input scale."""

    load: object
    count: int
    input: object = None  # models.InputSize of the model trained, or None (no rescaling)

    def scale(self, height, width):
        return min(self.input.factors(height, width)) if self.input else 1.0

    def resized(self, height, width):
        return self.input.resized(height, width) if self.input else (height, width)

    @property
    def input_side(self):
        return self.input.side if self.input else 640


def sample_seed(seed, epoch, index):
    """One 63-bit seed per (seed, epoch, image index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def make_loader(samples, schema, params, device, train=False, seed=0, pipeline=None, input_size=None, masks=False,
                rank=0, world_size=1, repeats=1):
    """Batches of (uint8 images, targets); training batches are shuffled, augmented by pipeline and grouped by
    shape, and in a process group dealt out to the ranks (see GroupedBatchSampler); an epoch passes over the
    training images `repeats` times. input_size (models.InputSize) is the model's resizing, at whose scale
    multi-image transforms work. masks: targets hold instance masks (training an instance-segmentation model).

    The loader's own generator keeps it from drawing on the global random state, so that state (which
    the model's sampling uses) is the same whether a run started fresh or resumed.
    """
    dataset = DetectionDataset(samples, schema, pipeline if train else None, input_size, seed, masks and train)
    common = {"num_workers": params["num_workers"], "collate_fn": collate, "pin_memory": device.type == "cuda",
              "persistent_workers": params["num_workers"] > 0, "generator": torch.Generator().manual_seed(seed)}
    if train:
        sampler = GroupedBatchSampler(samples, params["batch_size"], seed, rank, world_size, repeats)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
    return torch.utils.data.DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, **common)


def adaptive_repeats(images, batch_size):
    """Passes over a training set of `images` per epoch, as OTX's adaptive repeat sets them: floor(max(5 - 0.7 *
    sqrt(iterations per epoch - 1), 1)). A small set gets more steps per epoch (80 images at batch 16: 3 passes,
    205: 2, 700 or more: 1), so a schedule of epochs trains it long enough."""
    iterations = math.ceil(images / batch_size)
    return math.floor(max(5 - 0.7 * math.sqrt(iterations - 1), 1))


def collate(batch):
    return tuple(zip(*batch))


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches whose images are all wide or all tall, so padding wastes little.

    An epoch is `repeats` passes over the images, pass p of epoch e numbered e * repeats + p. The order depends
    only on (seed, pass), so a resumed run sees the same batches. Each batch lists (image index, pass) pairs,
    which carry the pass (the epoch, with one pass an epoch) to the dataset in whichever worker decodes it, so an
    image repeated in an epoch is augmented anew.
    In a process group of world_size (DDP), the batches are those of one process with batch_size * world_size,
    each dealt out in equal parts, part `rank` to this process: every rank gets the same number of batches.
    A batch too short to give each rank as many images (and two where batch_size allows) is topped up by
    repeating its own images, as DistributedSampler pads.
    """

    def __init__(self, samples, batch_size, seed, rank=0, world_size=1, repeats=1):
        self.wide = np.array([s.width >= s.height for s in samples])
        self.batch_size, self.seed, self.epoch, self.repeats = batch_size, seed, 0, repeats
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        yield from self.batches()

    def __len__(self):
        return len(self.batches())

    def batches(self):
        return [batch for done in range(self.repeats) for batch in self.pass_batches(self.epoch * self.repeats + done)]

    def pass_batches(self, number):
        generator = torch.Generator().manual_seed(self.seed * 1000 + number)
        order = torch.randperm(len(self.wide), generator=generator).numpy()
        size, batches = self.batch_size * self.world_size, []
        for wide in (True, False):
            group = order[self.wide[order] == wide].tolist()
            chunks = [group[i:i + size] for i in range(0, len(group), size)]
            if len(chunks) > 1 and len(chunks[-1]) == 1 < size:  # BatchNorm cannot train on one image
                chunks[-2] = chunks[-2] + chunks[-1]
                del chunks[-1]
            batches += chunks
        lone = [b for b in batches if len(b) == 1 < size] if len(batches) > 1 else []
        for batch in lone:  # a group of one image joins another group's batch
            if len(batch) == 1:  # (unless an earlier lone image joined it)
                batches = [b for b in batches if b is not batch]
                batches[0] += batch
        return [[(index, number) for index in self.part(batches[i])]
                for i in torch.randperm(len(batches), generator=generator).tolist()]

    def part(self, batch):
        """This rank's part of a batch of the whole process group."""
        if self.world_size == 1:
            return batch
        each = max(math.ceil(len(batch) / self.world_size), min(2, self.batch_size))
        return [batch[i % len(batch)] for i in range(each * self.world_size)][self.rank::self.world_size]


# ---------------------------------------------------------------- Ray side


def to_ray_dataset(data, split="train", masks=False):
    """A split of a data.yaml (any supported format) as a Ray Dataset, for pipelines of your own on Ray Data.

    Rows: image (HxWx3 uint8 RGB, EXIF-oriented), boxes ([N, 4] float32 x1, y1, x2, y2 pixels), labels ([N] int64
    label-schema ids: 1.. in the order train gives the classes), names ([N] class names), file_name, and with
    masks=True masks ([N, H, W] uint8 instance masks; the annotations must give shapes). The split is checked and
    cleaned as training does (warnings counted); crowd and difficult regions are left out. Ray tasks decode the
    images as the dataset is consumed. Needs `pip install 'otxlite[ray]'`.
    """
    try:
        import ray.data
    except ModuleNotFoundError:
        raise OtxliteError("to_ray_dataset needs Ray Data: pip install 'otxlite[ray]'.") from None
    specs = split_specs(data)
    require_splits(specs, split)
    splits, schema = load_splits(specs, task="instance_segmentation" if masks else None)
    dataset = DetectionDataset(splits[split].samples, schema, masks=masks)
    names = {label["id"]: label["name"] for label in schema["labels"]}

    def row(item):
        image, target = dataset.load(item["index"])
        labels = target["labels"].numpy()
        return {"image": image.permute(1, 2, 0).numpy(), "boxes": target["boxes"].numpy(), "labels": labels,
                "names": [names[int(label)] for label in labels],
                "file_name": str(dataset.samples[item["index"]].image),
                **({"masks": target["masks"].numpy()} if masks else {})}

    return ray.data.from_items([{"index": i} for i in range(len(dataset))]).map(row)
