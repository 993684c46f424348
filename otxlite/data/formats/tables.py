"""Tables of boxes: CSV files, pandas DataFrames (pickle or parquet) and Hugging Face datasets.

A table holds either one box a row (image, class and box columns) or one image a row (image, a list of
boxes and a list of labels, or an `objects` column holding both). Columns are found by their usual
spellings; `columns:` in data.yaml names them where the guess is wrong.
"""

import csv
import logging
import math
import os

import numpy as np

from otxlite.data.formats.base import (
    IMAGE_SUFFIXES,
    DataError,
    EmbeddedImage,
    Sample,
    Split,
    class_name,
    open_image,
    parse_box,
)

log = logging.getLogger("otxlite")
SPELLINGS = {
    "image": ("filename", "file_name", "image", "image_path", "image_name", "image_id", "img", "file", "path"),
    "class": ("class", "label", "cell_type", "category", "class_name", "category_name", "category_id", "class_id",
              "name"),
    "xmin": ("xmin", "x_min", "x1", "left"), "ymin": ("ymin", "y_min", "y1", "top"),
    "xmax": ("xmax", "x_max", "x2", "right"), "ymax": ("ymax", "y_max", "y2", "bottom"),
    "x": ("x", "bbox_x"), "y": ("y", "bbox_y"), "w": ("w", "width", "bbox_w", "bbox_width"),
    "h": ("h", "height", "bbox_h", "bbox_height"),
    "objects": ("objects",),
    "boxes": ("boxes", "bboxes", "bbox"),
    "labels": ("labels", "classes", "categories", "category", "class", "label"),
}
BOX_COLUMNS = {"xyxy": ("xmin", "ymin", "xmax", "ymax"), "xywh": ("x", "y", "w", "h")}
OBJECT_KEYS = {"boxes": ("bbox", "bboxes", "boxes"), "labels": ("category", "categories", "label", "labels", "class")}
EXTRAS = {"pandas": "pandas", "pyarrow": "pandas", "datasets": "hf"}


# ---------------------------------------------------------------- the three sources


def load_csv(spec):
    path = spec.ann_files
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            text = file.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the CSV file ({err}).") from None
    if not text.strip():
        raise DataError(f"{path}: empty file; a CSV needs a header row and one row per box.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else sniff_delimiter(text.splitlines()[0])
    try:
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        header, rows = [name.strip() for name in reader.fieldnames], []
        for number, row in enumerate(reader, 2):
            if None in row or None in row.values():
                fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                raise DataError(f"{path} (line {number}): {fields} fields where the header has {len(header)}. "
                                f"Fix the row.")
            rows.append(({key.strip(): value.strip() for key, value in row.items()}, f"{path} (line {number})"))
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err}).") from None
    return table_split(spec, header, rows, path.parent)


def load_dataframe(spec):
    """A pandas DataFrame saved with to_pickle (.pkl, .pickle) or to_parquet (.parquet)."""
    pandas = require("pandas", spec.ann_files)
    path = spec.ann_files
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    try:
        if path.suffix.lower() == ".parquet" or path.is_dir():
            require("pyarrow", path)
            frame = pandas.read_parquet(path)
        else:
            frame = pandas.read_pickle(path)  # a pickle runs code when loaded: read only files you made or trust
    except Exception as err:  # pandas and pickle raise many types for a broken or foreign file
        raise DataError(f"{path}: cannot read it as a DataFrame ({type(err).__name__}: {err}).") from None
    if not isinstance(frame, pandas.DataFrame):
        raise DataError(f"{path}: holds a {type(frame).__name__}, not a pandas DataFrame.")
    rows = [(row, f"{path} (row {index})") for index, row in zip(frame.index, frame.to_dict("records"))]
    return table_split(spec, [str(c) for c in frame.columns], rows, path.parent)


def load_hf(spec):
    """A Hugging Face dataset saved with save_to_disk, or its parquet files; read offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets = require("datasets", spec.ann_files)
    path = spec.ann_files
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            dataset = datasets.load_from_disk(str(path))
        else:
            files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
            if not files or not files[0].exists():
                raise DataError(f"{path}: no Hugging Face dataset here (save_to_disk folder or parquet files).")
            dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except DataError:
        raise
    except Exception as err:  # datasets raises many types for a broken or foreign folder
        raise DataError(f"{path}: cannot load it as a Hugging Face dataset ({type(err).__name__}: {err}).") from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = pick_split(dataset, spec, path)
    columns = find_columns(dataset.column_names, spec)
    names = spec.names or class_label_names(dataset.features.get(columns.get("objects") or columns.get("labels")))
    image_column = columns["image"]
    if isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    rows = [(row, f"{path} (row {index})") for index, row in enumerate(dataset.to_list())]
    return table_split(spec, dataset.column_names, rows, path if path.is_dir() else path.parent, names, "xywh")


def pick_split(dataset_dict, spec, path):
    wanted = spec.subset or spec.name
    for name in {"val": ("val", "validation", "valid")}.get(wanted, (wanted,)):
        if name in dataset_dict:
            return dataset_dict[name]
    raise DataError(f"{path}: no split '{wanted}' in this dataset (it has {', '.join(dataset_dict)}). "
                    f"Pick one with 'subset:' in data.yaml.")


def class_label_names(feature):
    """The names of the first ClassLabel inside a (nested) datasets feature, if there is one."""
    if hasattr(feature, "names") and hasattr(feature, "str2int"):
        return dict(enumerate(feature.names))
    if isinstance(feature, dict):
        children = list(feature.values())
    elif hasattr(feature, "feature"):  # List / Sequence of something
        children = [feature.feature]
    else:
        children = list(feature) if isinstance(feature, (list, tuple)) else []
    for child in children:
        names = class_label_names(child)
        if names:
            return names
    return None


def require(module, path):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"{path}: reading it needs the '{module}' package. "
                        f"Install it with: pip install 'otxlite[{EXTRAS[module]}]'") from None


def sniff_delimiter(header):
    return max(",;\t|", key=header.count)


# ---------------------------------------------------------------- rows to samples


def find_columns(header, spec):
    """{role: column} for the roles this table has; spec.columns (from data.yaml) wins over guessing."""
    given = dict(spec.columns or {})
    unknown = [c for c in given.values() if c not in header]
    if unknown:
        raise DataError(f"{spec.ann_files}: columns {unknown} (from 'columns:' in data.yaml) are not in the table "
                        f"(its columns: {', '.join(header)}).")
    lower = {c.lower().strip(): c for c in header}
    columns = {}
    for role, spellings in SPELLINGS.items():
        if role in given:
            columns[role] = given[role]
        else:
            found = next((lower[s] for s in spellings if s in lower and lower[s] not in columns.values()), None)
            if found:
                columns[role] = found
    if "image" not in columns:
        raise DataError(f"{spec.ann_files}: no image column (looked for {', '.join(SPELLINGS['image'])}; "
                        f"columns: {', '.join(header)}). Name it in data.yaml: columns: {{image: <column>}}.")
    return columns


def table_split(spec, header, rows, folder, names=None, default_layout="xyxy"):
    """Samples from rows of (a dict of column values, the record's name); default_layout for ambiguous boxes."""
    columns = find_columns(header, spec)
    names = spec.names or names
    if "objects" in columns or ("boxes" in columns and "xmin" not in columns and "x" not in columns):
        samples = image_rows(spec, columns, rows, folder, names, default_layout)
    else:
        samples = box_rows(spec, columns, rows, folder, names)
    order = list(names.values()) if names else None  # classes in the order of names when given, else first appearance
    return Split(spec.name, samples, order)


def box_rows(spec, columns, rows, folder, names):
    """One box a row; rows of one image gather into one sample; a row without class and box is a background image."""
    layout = spec.bbox_format or next((f for f, roles in BOX_COLUMNS.items() if all(r in columns for r in roles)), None)
    if layout is None or "class" not in columns:
        missing = [r for r in ("class", *BOX_COLUMNS["xyxy"]) if r not in columns]
        raise DataError(f"{spec.ann_files}: cannot find the {', '.join(missing)} column(s) among "
                        f"{', '.join(header_of(rows))}. Name them in data.yaml, e.g. columns: "
                        f"{{class: label, xmin: x1, ymin: y1, xmax: x2, ymax: y2}} (or x, y, w, h).")
    box_columns = [columns[r] for r in BOX_COLUMNS[layout]]
    samples = {}
    for row, record in rows:
        key = row[columns["image"]]
        key = bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else key if isinstance(key, (str, int)) \
            else record
        sample = samples.get(key)
        if sample is None:
            sample = samples[key] = Sample(image_of(row[columns["image"]], spec, folder, record), record)
        values = [row[c] for c in box_columns]
        if is_empty(row[columns["class"]]) and all(is_empty(v) for v in values):
            continue
        box = parse_box(values, f"{record}, columns {', '.join(box_columns)}")
        sample.add(corners(box, layout), class_name(row[columns["class"]], names, record), record)
    return list(samples.values())


def image_rows(spec, columns, rows, folder, names, default_layout):
    """One image a row, with its boxes and labels as lists (or as an `objects` column holding both)."""
    parsed = []
    for row, record in rows:
        image = image_of(row[columns["image"]], spec, folder, record)
        if "objects" in columns:
            boxes, labels = object_lists(row[columns["objects"]], record)
        elif "labels" in columns:
            boxes, labels = row[columns["boxes"]], row[columns["labels"]]
        else:
            raise DataError(f"{record}: a boxes column but no labels column. Name it: columns: {{labels: <column>}}.")
        boxes, labels = as_list(boxes), as_list(labels)
        if len(boxes) != len(labels):
            raise DataError(f"{record}: {len(boxes)} boxes but {len(labels)} labels.")
        sample = Sample(image, record)
        for index, (box, label) in enumerate(zip(boxes, labels)):
            where = f"{record}, box {index}"
            sample.add(parse_box(as_list(box), where), class_name(label, names, where), where)
        parsed.append(sample)
    layout = spec.bbox_format or detect_layout(parsed, spec, default_layout)
    for sample in parsed:
        sample.boxes = [corners(box, layout) for box in sample.boxes]
    return parsed


def object_lists(objects, record):
    if isinstance(objects, dict):
        keys = {role: next((k for k in spellings if k in objects), None) for role, spellings in OBJECT_KEYS.items()}
        if None in keys.values():
            raise DataError(f"{record}: the objects column needs bbox and category fields (it has {list(objects)}).")
        return objects[keys["boxes"]], objects[keys["labels"]]
    items = as_list(objects)
    if all(isinstance(item, dict) for item in items):  # a list of {bbox, category} records
        pairs = [object_lists({k: [v] for k, v in item.items()}, record) for item in items]
        return [p[0][0] for p in pairs], [p[1][0] for p in pairs]
    raise DataError(f"{record}: the objects column should hold {{bbox: [...], category: [...]}}.")


def detect_layout(samples, spec, default):
    """The reading (xyxy or xywh) under which fewer boxes leave their image or turn inside out; said in the log.

    When both fit every box (one large object an image, say), the format's convention decides.
    """
    misfits = {"xyxy": 0, "xywh": 0}
    for sample in samples:
        try:
            with open_image(sample.image) as image:
                width, height = image.size
        except (OSError, ValueError):  # a missing or broken image is reported when the split is checked
            continue
        for x, y, a, b in sample.boxes:
            misfits["xyxy"] += a < x or b < y or a > width + 1 or b > height + 1
            misfits["xywh"] += a < 0 or b < 0 or x + a > width + 1 or y + b > height + 1
    layout = default if misfits["xyxy"] == misfits["xywh"] else min(misfits, key=misfits.get)
    log.info("%s: boxes read as %s (as x1,y1,x2,y2 %d boxes would not fit their image, as x,y,w,h %d); "
             "set 'bbox-format:' in data.yaml if that is wrong.", spec.ann_files, layout, misfits["xyxy"],
             misfits["xywh"])
    return layout


def corners(box, layout):
    if layout == "xywh":
        return [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    if layout != "xyxy":
        raise DataError(f"bbox-format '{layout}' is not xyxy or xywh.")
    return box


def image_of(value, spec, folder, record):
    """A Path (relative to data-roots, else to the table's folder) or an EmbeddedImage for encoded bytes."""
    if isinstance(value, dict):  # Hugging Face / parquet image struct
        if value.get("bytes"):
            return EmbeddedImage(value.get("path") or record, bytes(value["bytes"]))
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return EmbeddedImage(record, bytes(value))
    if is_empty(value) or not isinstance(value, (str, os.PathLike, int)):
        raise DataError(f"{record}: the image should be a path or encoded bytes, not {type(value).__name__}.")
    path = (spec.data_roots or folder) / str(value)
    if not path.suffix and not path.exists():  # an image id without its extension
        path = next((path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).exists()), path)
    return path


def is_empty(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value)


def as_list(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def header_of(rows):
    return list(rows[0][0]) if rows else []
