"""A split's records, read and checked as training needs them: problems counted (clipped, empty or
disagreeing boxes, unreadable images), the label schema taken from train, every split loaded for a task."""

import logging
from dataclasses import dataclass, replace

from PIL import UnidentifiedImageError

from otxlite.core.labels import LabelSchema, label_names
from otxlite.core.tasks import TASKS
from otxlite.data.formats import DataError
from otxlite.data.formats.base import (
    decode_reporting_truncation,
    ends_early,
    first_appearance,
    open_image,
    oriented_size,
)
from otxlite.data.formats.shapes import Polygons
from otxlite.data.specs import read_listed, require_splits

log = logging.getLogger("otxlite")


MIN_SHAPE_IOU = 0.5  # a box and its own polygon or mask overlapping less than this disagree


CLIP_TOLERANCE = 1.0  # px a box may reach outside its image (rounding, 1-based VOC) before clipping is worth a warning


@dataclass
class Problem:
    """One thing wrong in a split: where it is, what it is, and whether training would fail on it."""

    kind: str
    where: str
    message: str
    fatal: bool




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


def load_splits(specs, schema=None, task="detection", grow=None):
    """Load every split for task (a name in tasks.TASKS, or None: any task, shapes checked where given); the
    label schema comes from train unless one is given (e.g. by a model).

    When train declares its classes (data.yaml `names`, COCO categories), classes that only val or test hold are
    kept, in the declared order, with a warning that the model cannot learn them; otherwise such a class is an
    error. grow: (the LabelSchema of a model, its path) whose classes the schema keeps, with their ids and colours,
    adding the data's new classes after them (class-incremental training); its classes may be in any split.
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
        if grow:
            if declared:
                grow[0].check_ids(declared, "data.yaml's names" if specs["train"].names else specs["train"].ann_files)
            known = known + [c for c in grow[0].names if c not in known]
    else:
        known = label_names(schema)
    for name, spec in specs.items():
        if name not in splits:
            splits[name] = load_split(spec, known_classes=known, masks=masks)
    if schema is None:
        present = {c for split in splits.values() for s in split.samples for c in s.classes}
        order = [c for c in known if c in present and (c in train.class_order or declared)]
        if grow:
            return splits, grown_schema(grow, order, train.class_order, task or grow[0].task)
        unlearned = [c for c in order if c not in train.class_order]
        if unlearned:
            log.warning("Classes in val or test but not in the training split, kept as train declares them; "
                        "the model cannot learn them: %s", ", ".join(unlearned))
        schema = LabelSchema.of_classes(order, task or "detection")
    return splits, schema


def grown_schema(grow, order, trained, task):
    """The schema of a model (grow: its LabelSchema and path) grown by the data's classes (order) for task; the
    model's classes that the training split lacks are kept, with a warning."""
    old, source = grow
    schema, added = old.grown(order, source)
    schema["task"] = task
    lacking = [c for c in old.names if c not in trained]
    log.info("Growing %s (%s): %s.", source, ", ".join(old.names),
             f"new classes {', '.join(added)}" if added else "no new classes")
    if lacking:
        log.warning("The training split has no boxes of %s, which %s knows: kept, with its id, but nothing here "
                    "teaches it and it may be forgotten. Add images where it is labelled.", ", ".join(lacking),
                    source)
    return schema
