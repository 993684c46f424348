"""An instance-segmentation copy of a detection dataset: every box gets the ellipse inscribed in it as its mask
(a 32-point polygon), written as one COCO JSON per split beside a data.yaml whose images stay where they are.

For blood cells (BCCD), which are round, the ellipse is close to the true outline. It makes the segmentation
chain measurable on real images from random weights, where coco-seg's 26 training images give mask mAP 0
(pretrained weights cannot be downloaded here). The masks are derived from the boxes, not drawn by hand: figures
measured on them say what INT8 or QAT do to a mask model, not how well it segments cells.

Usage: python benchmarks/ellipse_masks.py [--data BCCD data.yaml] [--output /tmp/bccd-ellipses]
Prints the written data.yaml.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import yaml
from qat import write_bccd_yaml  # benchmarks/qat.py, beside this script

from otxlite.data.records import load_splits
from otxlite.data.specs import read_data_yaml

POINTS = 32


def ellipse(box):
    """The POINTS-point polygon of the ellipse inscribed in box (x1, y1, x2, y2), as COCO's [x1, y1, x2, ...]."""
    x1, y1, x2, y2 = map(float, box)
    angles = np.linspace(0, 2 * np.pi, POINTS, endpoint=False)
    xs = (x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(angles)
    ys = (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(angles)
    return np.stack([xs, ys], axis=1).round(2).ravel().tolist()


def write_split(split, names, path):
    images, annotations = [], []
    for image_id, sample in enumerate(split.samples, 1):
        images.append({"id": image_id, "file_name": str(sample.image), "width": sample.width,
                       "height": sample.height})
        for box, name, ignored in zip(sample.boxes, sample.classes, sample.ignored):
            x1, y1, x2, y2 = map(float, box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": names.index(name) + 1, "iscrowd": int(ignored),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": np.pi * (x2 - x1) * (y2 - y1) / 4,
                                "segmentation": [ellipse(box)]})
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="detection data.yaml (default: BCCD's train/val/test)")
    parser.add_argument("--output", type=Path, default=Path("/tmp/bccd-ellipses"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    data = args.data or write_bccd_yaml(args.output / "bccd.yaml")
    splits, schema = load_splits(read_data_yaml(data))
    names = [label["name"] for label in schema["labels"]]
    entries = {}
    for name, split in splits.items():
        write_split(split, names, args.output / f"{name}.json")
        entries[name] = {"ann-files": f"{name}.json", "data-roots": "/"}
    (args.output / "data.yaml").write_text(yaml.safe_dump({"data": entries}, sort_keys=False))
    print(args.output / "data.yaml")


if __name__ == "__main__":
    main()
