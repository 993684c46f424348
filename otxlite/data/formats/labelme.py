"""Labelme: one JSON per image with `shapes` (polygon, rectangle, circle) and `imagePath`.

Shapes sharing a label and a group_id are one instance of several parts, as Labelme groups them. Images are
found at imagePath from the JSON's folder, or by file name under data-roots.
"""

import math
from pathlib import Path

from otxlite.core.files import read_json
from otxlite.data.formats.base import DataError, Sample, Split
from otxlite.data.formats.shapes import Polygons

CIRCLE_POINTS = 32


def load_labelme(spec):
    files = sorted(spec.ann_files.rglob("*.json")) if spec.ann_files.is_dir() else [spec.ann_files]
    samples = [read_labelme_file(path, spec.data_roots) for path in files]
    return Split(spec.name, samples, None)


def read_labelme_file(path, data_roots):
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or not isinstance(data.get("imagePath"), str):
        raise DataError(f"{path}: not a Labelme file (needs 'shapes' and 'imagePath').")
    image_path = Path(data["imagePath"].replace("\\", "/"))
    image = data_roots / image_path.name if data_roots else path.parent / image_path
    sample = Sample(image, str(path))
    if all(isinstance(data.get(k), int) for k in ("imageWidth", "imageHeight")):
        sample.declared_size = (data["imageWidth"], data["imageHeight"])
    instances = {}
    for index, shape in enumerate(data["shapes"]):
        record = f"{path} (shapes[{index}])"
        label, points = (shape.get("label"), shape.get("points")) if isinstance(shape, dict) else (None, None)
        if not isinstance(label, (str, int)) or isinstance(label, bool) or not isinstance(points, list) or not points:
            raise DataError(f"{record}: a shape needs a 'label' and 'points'.")
        points = [parse_point(p, record) for p in shape["points"]]
        kind = shape.get("shape_type") or "polygon"
        key = (str(shape["label"]), shape["group_id"]) if shape.get("group_id") is not None else index
        if kind == "rectangle" and len(points) == 2:
            (x1, y1), (x2, y2) = points
            part = [x1, y1, x2, y1, x2, y2, x1, y2]
        elif kind == "circle" and len(points) == 2:
            (cx, cy), (ex, ey) = points
            radius = math.hypot(ex - cx, ey - cy)
            part = [v for k in range(CIRCLE_POINTS) for v in (cx + radius * math.cos(2 * math.pi * k / CIRCLE_POINTS),
                                                               cy + radius * math.sin(2 * math.pi * k / CIRCLE_POINTS))]
        elif kind == "polygon":
            part = [v for point in points for v in point]
        else:
            raise DataError(f"{record}: shape_type '{kind}' with {len(points)} points is not an instance outline; "
                            f"otxlite reads polygon, rectangle and circle shapes. Delete it or redraw it.")
        instances.setdefault(key, (str(shape["label"]), record, []))[2].append(part)
    for name, record, parts in instances.values():
        polygons = Polygons(parts)
        sample.add(polygons.box(), name, record, shape=polygons)
    return sample


def parse_point(point, record):
    """[x, y] as two finite floats, or a DataError naming the shape."""
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        x = y = math.nan
    if not (math.isfinite(x) and math.isfinite(y)):
        raise DataError(f"{record}: point {point!r} is not two finite numbers [x, y].")
    return x, y
