"""COCO JSON: one file per split, images under data-roots (default: the JSON's folder); `segmentation` as
polygons or RLE (compressed or not) where given."""

import logging
import math

from otxlite.core.files import read_json
from otxlite.data.formats.base import DataError, Sample, Split, parse_box
from otxlite.data.formats.shapes import Polygons, Rle

log = logging.getLogger("otxlite")


def load_coco(spec):
    path = spec.ann_files
    coco = read_json(path)
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories' lists).")
    root = spec.data_roots or path.parent
    categories = read_categories(coco["categories"], path)
    samples = read_images(coco["images"], root, path)
    used = set()
    for index, ann in enumerate(coco["annotations"]):
        record = f"{path} (annotations[{index}])"
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "bbox")):
            raise DataError(f"{record}: needs image_id, category_id and bbox.")
        sample, category = samples.get(hashable(ann["image_id"])), hashable(ann["category_id"])
        if sample is None:
            raise DataError(f"{record}: image_id {ann['image_id']!r} is not in 'images'.")
        if category not in categories:
            raise DataError(f"{record}: category_id {ann['category_id']!r} is not in 'categories'.")
        x, y, w, h = parse_box(ann["bbox"], record)
        sample.add([x, y, x + w, y + h], categories[category], record, ignored=ann.get("iscrowd") in (1, True),
                   shape=read_segmentation(ann.get("segmentation"), record))
        used.add(category)
    unused = [name for c, name in categories.items() if c not in used]
    if unused:
        log.info("%s: categories without annotations: %s", path, ", ".join(unused))
    by_id = sorted(categories) if all(isinstance(c, int) for c in categories) else list(categories)
    return Split(spec.name, list(samples.values()), [categories[c] for c in by_id if c in used],
                 [categories[c] for c in by_id])


def read_segmentation(value, record):
    """Polygons, Rle, or None where the annotation has no segmentation."""
    if value in (None, [], {}):
        return None
    if isinstance(value, list) and all(isinstance(part, list) for part in value):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for part in value for v in part) \
                or any(len(part) % 2 for part in value):
            raise DataError(f"{record}: segmentation polygons must be lists of x, y numbers.")
        return Polygons(value)
    if isinstance(value, dict) and isinstance(value.get("counts"), (str, list)) and isinstance(value.get("size"), list) \
            and len(value["size"]) == 2:
        return Rle(value)
    raise DataError(f"{record}: segmentation is neither polygons ([[x1, y1, ...], ...]) nor RLE "
                    f"({{size: [h, w], counts: ...}}).")


def hashable(value):
    """An id as a dict key: lists and dicts (malformed ids) become their text."""
    return value if isinstance(value, (int, str, float, bool, type(None))) else repr(value)


def read_categories(records, path):
    """{category id: name}; a repeated id or name is an error naming both records."""
    categories, first = {}, {}
    for index, category in enumerate(records):
        record = f"{path} (categories[{index}])"
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), (str, int)):
            raise DataError(f"{record}: a category needs an 'id' and a 'name'.")
        key, name = hashable(category["id"]), str(category["name"])
        if key in categories:
            raise DataError(f"{record}: category id {category['id']!r} repeats categories[{first[key]}]. "
                            f"Give every category its own id.")
        if name in categories.values():
            other = next(first[k] for k, v in categories.items() if v == name)
            raise DataError(f"{record}: category name '{name}' repeats categories[{other}] (another id). "
                            f"Merge the two categories or rename one.")
        categories[key], first[key] = name, index
    return categories


def read_images(records, root, path):
    """{image id: Sample}; a repeated id is an error naming both records."""
    samples, first = {}, {}
    for index, image in enumerate(records):
        record = f"{path} (images[{index}])"
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{record}: an image needs an 'id' and a 'file_name'.")
        key = hashable(image["id"])
        if key in samples:
            raise DataError(f"{record}: image id {image['id']!r} repeats images[{first[key]}]. "
                            f"Give every image its own id.")
        sample = Sample(root / image["file_name"], f"{path} (image id {image['id']})")
        width, height = image.get("width"), image.get("height")
        if all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (width, height)):
            sample.declared_size = (round(width), round(height))
        samples[key], first[key] = sample, index
    return samples
