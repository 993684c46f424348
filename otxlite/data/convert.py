"""`otxlite data convert --to coco`: any supported dataset as COCO JSON, images copied beside it."""

import logging
import shutil
from pathlib import Path, PurePath

from pycocotools import mask as coco_mask

from otxlite.core.files import make_folder, write_json
from otxlite.core.labels import LabelSchema
from otxlite.data.formats import EmbeddedImage
from otxlite.data.formats.base import IMAGE_SUFFIXES, open_image
from otxlite.data.formats.shapes import Polygons, as_text
from otxlite.data.records import declared_classes, load_split, load_splits
from otxlite.data.specs import SplitSpec, write_data_yaml

log = logging.getLogger("otxlite")


def convert_to_coco(specs, output):
    """OUTPUT/annotations/<split>.json, OUTPUT/images/<split>/ and OUTPUT/data.yaml over them.

    Boxes are written as otxlite trains on them: clipped to the image, zero-area and duplicate boxes dropped
    (each said in a warning). The classes train declares (COCO categories, CVAT labels, data.yaml names) are all
    kept, in their order, used or not. Instances with a mask (polygons, RLE, mask image) get `segmentation`: polygons
    as polygons, the others as compressed RLE; one whose shape cannot be a mask is dropped (a warning). Category
    ids follow the label schema, so the label order survives the trip.
    """
    output = Path(output)
    if "train" in specs:
        splits, schema = load_splits(specs, task=None)
        declared = declared_classes(specs["train"], splits["train"]) or []  # kept whole: their ids survive
        schema = LabelSchema.of_classes(declared + [c for c in LabelSchema.of(schema).names if c not in declared])
    else:
        splits = {name: load_split(spec, masks=None) for name, spec in specs.items()}
        schema = LabelSchema.of_classes(list(dict.fromkeys(c for s in splits.values() for c in s.class_order)))
    ids = LabelSchema.of(schema).id_of
    categories = [{"id": label["id"], "name": label["name"], "supercategory": "none"} for label in schema["labels"]]
    written = {}
    for name, split in splits.items():
        image_dir = output / "images" / name
        make_folder(image_dir)
        images, annotations, used = [], [], set()
        for index, sample in enumerate(split.samples, 1):
            file_name = unique_name(sample.image, index, used)
            copy_image(sample.image, image_dir / file_name)
            images.append({"id": index, "file_name": file_name, "width": sample.width, "height": sample.height})
            for (x1, y1, x2, y2), class_name, ignored, shape in zip(sample.boxes, sample.classes, sample.ignored,
                                                                    sample.shapes):
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": ids[class_name],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": int(ignored), **segmentation(shape, sample)})
        write_json(output / "annotations" / f"{name}.json",
                   {"images": images, "annotations": annotations, "categories": categories})
        written[name] = SplitSpec(name, output / "annotations" / f"{name}.json", image_dir)
        log.info("%s: %d images, %d boxes -> %s", name, len(images), len(annotations),
                 output / "annotations" / f"{name}.json")
    write_data_yaml(written, output / "data.yaml")
    return output / "data.yaml"


def segmentation(shape, sample):
    """{"segmentation": ..., "area": mask area} for an instance with a shape, else {}."""
    if shape is None:
        return {}
    rle = shape.rle(sample.width, sample.height)
    written = shape.parts if isinstance(shape, Polygons) else as_text(rle)
    return {"segmentation": written, "area": float(coco_mask.area(rle))}


def unique_name(image, index, used):
    """The image's own file name, unless another image of the split has it (or it has none)."""
    name = PurePath(str(image)).name
    if PurePath(name).suffix.lower() not in IMAGE_SUFFIXES:
        with open_image(image) as opened:
            name = f"{index:06d}.{(opened.format or 'png').lower().replace('jpeg', 'jpg')}"
    if name in used:
        name = f"{index:06d}_{name}"
    used.add(name)
    return name


def copy_image(image, target):
    if isinstance(image, EmbeddedImage):
        target.write_bytes(image.data)
    else:
        shutil.copyfile(image, target)
