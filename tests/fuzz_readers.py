"""Fuzzing the readers: whatever a user's files hold, the only exception that escapes is otxlite's own error.

Not collected by itself: tests/test_fuzz.py runs it in a process of its own."""

import json
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from otxlite.core.errors import OtxliteError
from otxlite.data.formats import SplitSpec
from otxlite.data.formats.shapes import instance_masks
from otxlite.data.records import check_split
from otxlite.data.specs import read_data_yaml

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
structures = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
numbers_as_text = st.one_of(st.floats().map(str), st.integers(-5, 700).map(str), st.text(max_size=6))


def read_everything(write, masks=False):
    """Write a dataset with write(folder) (which returns the SplitSpec or data.yaml to read), then read and check
    it as training would (masks: as instance segmentation does, rasterising every kept mask); only OtxliteError
    may escape. (tests/test_fuzz.py runs this module in its own process, so a native crash or a hang fails.)"""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "a.png")
        target = write(folder)
        try:
            specs = read_data_yaml(target) if isinstance(target, Path) else {"train": target}
            for spec in specs.values():
                split, problems = check_split(spec, decode=True, masks=masks)
                if masks and not any(p.fatal for p in problems):
                    for sample in split.samples:
                        kept = [shape for shape, ignored in zip(sample.shapes, sample.ignored) if not ignored]
                        assert instance_masks(kept, sample.width, sample.height).shape[0] == len(kept)
        except OtxliteError:
            pass


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_data_yaml(content):
    def write(folder):
        (folder / "data.yaml").write_bytes(content)
        return folder / "data.yaml"
    read_everything(write)


@FUZZ
@given(st.dictionaries(st.sampled_from(["data", "names", "path", "train", "val"]), structures, max_size=4)
       | st.fixed_dictionaries({"data": st.dictionaries(
           st.sampled_from(["train", "val", 3]),
           st.dictionaries(st.sampled_from(["ann-files", "data-roots", "format", "subset", "names", "columns",
                                            "bbox-format", "image-list"]), structures | st.just("a.png"),
                           max_size=5), max_size=2)}))
def test_any_structure_as_data_yaml(config):
    def write(folder):
        (folder / "data.yaml").write_text(yaml.safe_dump(config))
        return folder / "data.yaml"
    read_everything(write)


coco_like = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": scalars, "file_name": st.just("a.png") | scalars},
                                             optional={"width": scalars, "height": scalars}) | structures, max_size=3),
    "categories": st.lists(st.fixed_dictionaries({"id": scalars, "name": scalars}) | structures, max_size=3),
    "annotations": st.lists(st.fixed_dictionaries(
        {"image_id": scalars, "category_id": scalars, "bbox": st.lists(scalars, max_size=5) | scalars},
        optional={"iscrowd": scalars}) | structures, max_size=4)})


@FUZZ
@given(st.binary(max_size=200) | coco_like.map(lambda c: json.dumps(c).encode()) | structures.map(
    lambda s: json.dumps(s).encode()))
def test_any_coco_json(content):
    def write(folder):
        (folder / "c.json").write_bytes(content)
        return SplitSpec("train", folder / "c.json", folder)
    read_everything(write)


voc_object = st.fixed_dictionaries({"name": st.text(max_size=6), "difficult": st.text(max_size=3),
                                    **{k: numbers_as_text for k in ("xmin", "ymin", "xmax", "ymax")}})


@FUZZ
@given(st.binary(max_size=200) | st.tuples(
    st.sampled_from(["a.png", "", "missing", "a"]), st.tuples(numbers_as_text, numbers_as_text),
    st.lists(voc_object, max_size=3)).map(lambda t: (
        f"<annotation><filename>{escape(t[0])}</filename><size><width>{escape(t[1][0])}</width>"
        f"<height>{escape(t[1][1])}</height></size>" + "".join(
            f"<object><name>{escape(o['name'])}</name><difficult>{escape(o['difficult'])}</difficult><bndbox>"
            + "".join(f"<{k}>{escape(o[k])}</{k}>" for k in ("xmin", "ymin", "xmax", "ymax")) + "</bndbox></object>"
            for o in t[2]) + "</annotation>").encode()))
def test_any_voc_xml(content):
    def write(folder):
        (folder / "xml").mkdir()
        (folder / "xml" / "a.xml").write_bytes(content)
        return SplitSpec("train", folder / "xml", folder)
    read_everything(write)


@FUZZ
@given(st.binary(max_size=200) | st.lists(st.lists(numbers_as_text, max_size=9).map(" ".join), max_size=4).map(
    lambda lines: "\n".join(lines).encode()))
def test_any_yolo_labels(content):
    def write(folder):
        (folder / "labels").mkdir()
        (folder / "labels" / "a.txt").write_bytes(content)
        return SplitSpec("train", folder / "labels", folder, format="yolo", names={0: "cat", 1: "dog"})
    read_everything(write)


@FUZZ
@given(st.binary(max_size=200) | st.tuples(
    st.lists(st.sampled_from(["filename", "class", "xmin", "ymin", "xmax", "ymax", "x", "y", "w", "h", "other"]),
             max_size=7),
    st.lists(st.lists(numbers_as_text | st.just("a.png"), max_size=7), max_size=3)).map(
        lambda t: "\n".join([",".join(t[0])] + [",".join(row) for row in t[1]]).encode()))
def test_any_csv(content):
    def write(folder):
        (folder / "boxes.csv").write_bytes(content)
        return SplitSpec("train", folder / "boxes.csv", folder)
    read_everything(write)


points = st.lists(st.lists(numbers_as_text.map(lambda t: float(t) if t.lstrip("-").replace(".", "", 1).isdigit()
                                                else t) | scalars, max_size=3), max_size=6)


@FUZZ
@given(st.lists(st.fixed_dictionaries({"label": scalars, "points": points | structures},
                                      optional={"shape_type": st.sampled_from(["polygon", "rectangle", "circle",
                                                                               "line", "point"]) | scalars,
                                                "group_id": scalars}), max_size=4) | structures)
def test_any_labelme_shapes_as_instances(shapes):
    def write(folder):
        (folder / "labels").mkdir()
        (folder / "labels" / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.png"}))
        return SplitSpec("train", folder / "labels", folder)
    read_everything(write, masks=True)


@FUZZ
@given(st.lists(st.lists(st.floats(-100, 100) | st.integers(-100, 100) | st.floats() | st.sampled_from(
           [float("nan"), float("inf"), -float("inf"), 1e12, -1e12, 2 ** 62]), max_size=10), max_size=3)
       | st.fixed_dictionaries({"size": structures | st.just([32, 48]) | st.lists(st.integers(-2, 10 ** 9),
                                                                                   max_size=3),
                                "counts": structures | st.text(max_size=12) | st.lists(
                                    st.integers(-10 ** 12, 10 ** 12) | st.integers(0, 1536), max_size=6)})
       | structures)
def test_any_coco_segmentation_as_instances(segmentation):
    def write(folder):
        coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10],
                                 "segmentation": segmentation}]}
        (folder / "coco.json").write_text(json.dumps(coco))
        return SplitSpec("train", folder / "coco.json", folder)
    read_everything(write, masks=True)


@FUZZ
@given(st.sampled_from(["L", "P", "I;16", "RGB", "1"]), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31))
def test_any_mask_png_as_instances(mode, width, height, seed):
    def write(folder):
        (folder / "masks").mkdir()
        values = np.random.default_rng(seed).integers(0, 4, (height, width))
        picture = Image.fromarray(values.astype(np.uint8)).convert(mode) if mode != "RGB" else \
            Image.fromarray(np.repeat(values[..., None], 3, axis=2).astype(np.uint8))
        picture.save(folder / "masks" / "a_mask.png")
        return SplitSpec("train", folder / "masks", folder, names={0: "thing"})
    read_everything(write, masks=True)


def cvat_xml(shapes):
    """A CVAT for images 1.1 file over a.png holding shapes: (tag, label, attributes {name: text})."""
    body = "".join(f"<{tag} label={quoteattr(label)} " + " ".join(f"{k}={quoteattr(v)}" for k, v in attributes.items())
                   + "/>" for tag, label, attributes in shapes)
    return (f"<annotations><meta><task><labels><label><name>cat</name></label></labels></task></meta>"
            f"<image id='0' name='a.png' width='48' height='32'>{body}</image></annotations>").encode()


@FUZZ
@given(st.binary(max_size=300) | st.lists(st.tuples(
    st.sampled_from(["box", "polygon", "tag", "polyline"]), st.sampled_from(["cat", "", " "]) | st.text(max_size=6),
    st.dictionaries(st.sampled_from(["xtl", "ytl", "xbr", "ybr", "points", "group_id"]),
                    numbers_as_text | st.lists(st.tuples(numbers_as_text, numbers_as_text), max_size=5).map(
                        lambda pairs: ";".join(f"{x},{y}" for x, y in pairs)), max_size=6)), max_size=4).map(cvat_xml))
def test_any_cvat_xml_as_instances(content):
    def write(folder):
        (folder / "annotations.xml").write_bytes(content)
        return SplitSpec("train", folder / "annotations.xml", folder)
    read_everything(write, masks=True)
