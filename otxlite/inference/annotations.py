"""Pre-annotations: `otxlite predict --format coco|voc|yolo|labelme|cvat` writes detections (masks as polygons) as
annotation files that labelling tools open for correction, into a new folder with a data.yaml over them and the
images, so that `otxlite data check`, `data convert` and `train` read them back as they are.

Every format holds each class by the model's name (and, where it numbers classes, by its id: COCO categories, YOLO
index id - 1, CVAT's label list in id order), so a corrected set grows the same model (train --load-weights).
"""

import os
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as coco_mask

from otxlite.core.errors import OtxliteError
from otxlite.core.files import make_folder, write_atomic, write_json
from otxlite.core.labels import LabelSchema
from otxlite.data.formats import SplitSpec
from otxlite.data.specs import write_data_yaml

FORMATS = ("coco", "voc", "yolo", "labelme", "cvat")
MIN_CONTOUR_POINTS = 3


def mask_polygons(counts, height, width):
    """The outer contours of an RLE mask (counts as text) as polygons [x1, y1, x2, y2, ...] in pixel-edge
    coordinates, as COCO reads them; [] when none encloses a pixel.

    The contours are traced on the mask at twice its size, so they run a quarter pixel inside its edge, not half a
    pixel (through the centres of its rim): rasterised again, they give back the mask's own pixels.
    """
    import cv2

    mask = coco_mask.decode({"size": [height, width], "counts": counts.encode()})
    doubled = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (2 * width, 2 * height),
                         interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [[(float(v) + 0.5) / 2 for v in contour.reshape(-1)] for contour in contours
                if len(contour) >= MIN_CONTOUR_POINTS and cv2.contourArea(contour) > 0]
    if polygons and not coco_mask.area(coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))):
        return []
    return polygons


def instances(row):
    """(class name, score, [x1, y1, x2, y2], polygons or None) of a predicted row's detections."""
    masks = row.get("segmentation")
    for i, (name, score, (x, y, w, h)) in enumerate(zip(row["category_name"], row["score"], row["bbox"])):
        polygons = mask_polygons(masks[i], row["height"], row["width"]) if masks is not None else None
        if polygons == []:  # a mask too thin to outline: its box, as a polygon, for the labeller to redraw
            polygons = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        yield name, float(score), [x, y, x + w, y + h], polygons


class AnnotationFolder:
    """A writer (as writers.open_writer returns) of one format's annotation files into a new or empty folder;
    written at close, with data.yaml (one split, `train`) over them and the images."""

    def __init__(self, folder, fmt, run):
        self.folder, self.format = Path(folder), fmt
        self.schema, self.file_ids = LabelSchema.of(run["schema"]), run["file_ids"]
        # each image by its path under the folder all of them share, which data.yaml's data-roots names: a list's
        # names may climb out of its folder (../images/a.jpg), and nothing may be written outside the output
        paths = {name: Path(os.path.abspath(Path(run["root"]) / name)) for name in self.file_ids}
        common = Path(os.path.commonpath(list(paths.values())))
        self.root = common.parent if len(paths) == 1 else common
        self.names = {name: path.relative_to(self.root).as_posix() for name, path in paths.items()}
        if self.folder.is_file() or self.folder.is_dir() and any(self.folder.iterdir()):
            raise OtxliteError(f"{self.folder}: --format {fmt} writes a folder of annotation files; give a new or "
                               f"empty --output folder.")
        self.rows, self.done = [], set()

    def add(self, rows):
        self.rows += [row for row in rows if row["skipped"] is None]

    def flush(self):
        """Nothing: the files are written at close, together with the data.yaml over them."""

    def close(self):
        make_folder(self.folder)
        self.rows.sort(key=lambda row: self.file_ids[row["file_name"]])
        ann_files = getattr(self, f"write_{self.format}")()
        names = {label["id"] - 1: label["name"] for label in self.schema["labels"]} if self.format == "yolo" else None
        roots = None if self.format == "labelme" else self.root  # Labelme files name their image's path
        listed = None
        if self.format == "yolo":  # YOLO reads every image under data-roots: only the predicted ones are labelled
            listed = self.folder / "images.txt"
            text = "".join(f"{self.names[row['file_name']]}\n" for row in self.rows).encode()
            write_atomic(listed, lambda f: f.write(text))
        write_data_yaml({"train": SplitSpec("train", ann_files, roots, format=self.format, names=names,
                                            image_list=listed)}, self.folder / "data.yaml")
        return sum(len(row["score"]) for row in self.rows)

    def write_coco(self):
        images, annotations = [], []
        for row in self.rows:
            image_id = self.file_ids[row["file_name"]]
            images.append({"id": image_id, "file_name": self.names[row["file_name"]], "width": row["width"],
                           "height": row["height"]})
            for name, score, (x1, y1, x2, y2), polygons in instances(row):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": self.schema.id_of[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "score": score,
                                    **({"segmentation": polygons} if polygons else {})})
        categories = [{"id": label["id"], "name": label["name"], "supercategory": "none"}
                      for label in self.schema["labels"]]
        path = self.folder / "annotations.json"
        write_json(path, {"images": images, "annotations": annotations, "categories": categories})
        return path

    def write_voc(self):
        for row in self.rows:
            root = ET.Element("annotation")
            ET.SubElement(root, "filename").text = self.names[row["file_name"]]
            size = ET.SubElement(root, "size")
            for key, value in (("width", row["width"]), ("height", row["height"]), ("depth", 3)):
                ET.SubElement(size, key).text = str(value)
            for name, _, box, _ in instances(row):
                node = ET.SubElement(root, "object")
                ET.SubElement(node, "name").text = name
                ET.SubElement(node, "difficult").text = "0"
                corners = ET.SubElement(node, "bndbox")
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                    ET.SubElement(corners, key).text = f"{value:g}"
            write_xml(self.folder / "Annotations" / flat_name(self.names[row["file_name"]], ".xml"), root)
        return self.folder / "Annotations"

    def write_yolo(self):
        for row in self.rows:
            width, height, lines = row["width"], row["height"], []
            for name, _, (x1, y1, x2, y2), polygons in instances(row):
                index = self.schema.id_of[name] - 1
                if polygons:  # YOLO-seg: one polygon a line
                    points = [v / (width if i % 2 == 0 else height) for i, v in enumerate(joined(polygons))]
                    lines.append(" ".join([str(index), *(f"{v:.6f}" for v in points)]))
                else:
                    box = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
                    lines.append(" ".join([str(index), *(f"{v:.6f}" for v in box)]))
            label = self.folder / "labels" / PurePosixPath(self.names[row["file_name"]]).with_suffix(".txt")
            make_folder(label.parent)
            text = "".join(f"{line}\n" for line in lines).encode()
            write_atomic(label, lambda f, text=text: f.write(text))
        return self.folder / "labels"

    def write_labelme(self):
        for row in self.rows:
            path = self.folder / flat_name(self.names[row["file_name"]], ".json")
            shapes = []
            for name, score, (x1, y1, x2, y2), polygons in instances(row):
                parts = [[[p[i], p[i + 1]] for i in range(0, len(p), 2)] for p in polygons] if polygons else None
                group = len(shapes) if parts and len(parts) > 1 else None  # one instance of several parts
                shapes += [{"label": name, "points": points, "group_id": group, "shape_type": "polygon",
                            "description": f"score {score:.3f}", "flags": {}} for points in parts] if parts else \
                    [{"label": name, "points": [[x1, y1], [x2, y2]], "group_id": None, "shape_type": "rectangle",
                      "description": f"score {score:.3f}", "flags": {}}]
            image = os.path.relpath(self.root / self.names[row["file_name"]], path.parent)
            write_json(path, {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image,
                              "imageData": None, "imageHeight": row["height"], "imageWidth": row["width"]})
        return self.folder

    def write_cvat(self):
        root = ET.Element("annotations")
        ET.SubElement(root, "version").text = "1.1"
        labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
        for label in self.schema["labels"]:
            node = ET.SubElement(labels, "label")
            ET.SubElement(node, "name").text = label["name"]
            ET.SubElement(node, "color").text = label["color"]
        for row in self.rows:
            image = ET.SubElement(root, "image", id=str(self.file_ids[row["file_name"]] - 1),
                                  name=self.names[row["file_name"]],
                                  width=str(row["width"]), height=str(row["height"]))
            for group, (name, _, (x1, y1, x2, y2), polygons) in enumerate(instances(row), 1):
                if polygons:
                    for part in polygons:
                        points = ";".join(f"{part[i]:.2f},{part[i + 1]:.2f}" for i in range(0, len(part), 2))
                        ET.SubElement(image, "polygon", label=name, occluded="0", source="auto", points=points,
                                      z_order="0", group_id=str(group))
                else:
                    ET.SubElement(image, "box", label=name, occluded="0", source="auto", xtl=f"{x1:.2f}",
                                  ytl=f"{y1:.2f}", xbr=f"{x2:.2f}", ybr=f"{y2:.2f}", z_order="0")
        path = self.folder / "annotations.xml"
        write_xml(path, root)
        return path


def joined(parts):
    """Several parts as one polygon, as a YOLO-seg line holds them: each part closed, then joined to the next by
    a bridge walked there and back, which encloses nothing."""
    points = []
    for part in parts:
        points += part + part[:2]
    for part in reversed(parts[:-1]):
        points += part[:2]
    return points


def flat_name(file_name, suffix):
    """One file name a folder of per-image files can hold for an image at file_name (its folders joined by __)."""
    return "__".join(PurePosixPath(file_name).with_suffix(suffix).parts)


def write_xml(path, root):
    ET.indent(root)
    make_folder(path.parent)
    write_atomic(path, lambda f: ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True))
