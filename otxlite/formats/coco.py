"""COCO detection JSON: one file per split, images under data-roots (default: the JSON's folder)."""

import logging

from otxlite.files import read_json
from otxlite.formats.base import DataError, Sample, Split, parse_box

log = logging.getLogger("otxlite")


def load_coco(spec):
    path = spec.ann_files
    coco = read_json(path)
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories' lists).")
    root = spec.data_roots or path.parent
    try:
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        samples = {img["id"]: Sample(root / img["file_name"], f"{path} (image id {img['id']})")
                   for img in coco["images"]}
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed image or category record (missing {err}).") from None
    used = set()
    for index, ann in enumerate(coco["annotations"]):
        record = f"{path} (annotations[{index}])"
        try:
            sample, category, bbox = samples[ann["image_id"]], ann["category_id"], ann["bbox"]
        except (KeyError, TypeError) as err:
            raise DataError(f"{record}: needs image_id of a listed image, category_id and bbox ({err}).") from None
        if category not in categories:
            raise DataError(f"{record}: category_id {category} is not in 'categories'.")
        x, y, w, h = parse_box(bbox, record)
        sample.add([x, y, x + w, y + h], categories[category], record)
        used.add(category)
    unused = [categories[c] for c in sorted(categories) if c not in used]
    if unused:
        log.info("%s: categories without annotations are left out: %s", path, ", ".join(unused))
    return Split(spec.name, list(samples.values()), [categories[c] for c in sorted(used)])
