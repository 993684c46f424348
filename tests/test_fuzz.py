"""Fuzzing the readers: whatever a user's files hold, the only exception that escapes is otxlite's own error."""

import json
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from otxlite import OtxliteError
from otxlite.data import check_split, read_data_yaml
from otxlite.formats import SplitSpec

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
structures = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
numbers_as_text = st.one_of(st.floats().map(str), st.integers(-5, 700).map(str), st.text(max_size=6))


def read_everything(write):
    """Write a dataset with write(folder) (which returns the SplitSpec or data.yaml to read), then read and check
    it as training would; only OtxliteError may escape."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "a.png")
        target = write(folder)
        try:
            specs = read_data_yaml(target) if isinstance(target, Path) else {"train": target}
            for spec in specs.values():
                check_split(spec, decode=True)
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
