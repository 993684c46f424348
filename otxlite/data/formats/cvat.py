"""CVAT for images 1.1: one annotations.xml with an <image name=...> per image, holding <box> (xtl, ytl, xbr, ybr)
and <polygon> (points "x,y;x,y;...") shapes by label; the task's label list (meta) gives the class order.

Polygons sharing a label and a group_id are one instance of several parts. Images are found by name under
data-roots (default: the XML's folder).
"""

import math

from otxlite.data.formats.base import DataError, Sample, Split, parse_box, read_xml
from otxlite.data.formats.shapes import Polygons


def load_cvat(spec):
    path = spec.ann_files
    root = read_xml(path, f"not found (ann-files of split '{spec.name}').")
    if root.tag != "annotations":
        raise DataError(f"{path}: not a CVAT for images file (its root is <{root.tag}>, not <annotations>).")
    image_dir = spec.data_roots or path.parent
    samples = [read_image(node, path, image_dir) for node in root.iter("image")]
    order = [name.strip() for name in (label.findtext("name") or "" for label in root.iter("label")) if name.strip()]
    return Split(spec.name, samples, order or None, declared=order or None)


def read_image(node, path, image_dir):
    name = node.get("name")
    if not name:
        raise DataError(f"{path}: an <image> without its name.")
    sample = Sample(image_dir / name, f"{path} (image {name})")
    try:
        sample.declared_size = (int(node.get("width")), int(node.get("height")))
    except (TypeError, ValueError):
        pass
    groups = {}
    for index, shape in enumerate(node):
        record = f"{path} (image {name}, {shape.tag} {index + 1})"
        label = (shape.get("label") or "").strip()
        if shape.tag not in ("box", "polygon"):
            continue  # tags, points and polylines outline no instance
        if not label:
            raise DataError(f"{record}: needs a label.")
        if shape.tag == "box":
            box = parse_box([shape.get(k) for k in ("xtl", "ytl", "xbr", "ybr")], record)
            sample.add(box, label, record)
            continue
        part = parse_points(shape.get("points", ""), record)
        key = (label, shape.get("group_id")) if shape.get("group_id") not in (None, "", "0") else index
        groups.setdefault(key, (label, record, []))[2].append(part)
    for label, record, parts in groups.values():
        polygons = Polygons(parts)
        sample.add(polygons.box(), label, record, shape=polygons)
    return sample


def parse_points(text, record):
    """CVAT's "x,y;x,y;..." as [x1, y1, x2, y2, ...] finite floats, or a DataError naming the shape."""
    pairs = [point.split(",") for point in text.split(";")]
    try:
        part = [float(v) for pair in pairs if len(pair) == 2 for v in pair]
    except ValueError:
        part = []
    if len(part) != 2 * len(pairs) or not all(math.isfinite(v) for v in part):
        raise DataError(f"{record}: points '{text}' are not 'x,y;x,y;...' pairs of finite numbers.")
    return part
