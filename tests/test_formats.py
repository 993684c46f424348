"""Every annotation format loads BCCD's boxes exactly as the Pascal VOC files state them."""

import logging
import re
import sys

import numpy as np
import pytest
import yaml
from conftest import SAMPLE, copy_voc, sample_ids

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import label_names
from otxlite.data.formats import detect_format
from otxlite.data.loader import DetectionDataset
from otxlite.data.records import load_split, load_splits
from otxlite.data.specs import SplitSpec, read_data_yaml

SHARED_BCCD = SAMPLE.parent.parent.parent / "shared" / "datasets" / "bccd"


def voc_split(name):
    return load_split(SplitSpec(name, SAMPLE, SAMPLE / "JPEGImages"))


def assert_same_boxes(split, expected):
    """Same images in the same order, each with the same classes and boxes (to 1e-3 px)."""
    assert [s.image.stem for s in split.samples] == [s.image.stem for s in expected.samples]
    for sample, reference in zip(split.samples, expected.samples):
        assert sample.classes == reference.classes, sample.source
        np.testing.assert_allclose(np.reshape(sample.boxes, (-1, 4)), np.reshape(reference.boxes, (-1, 4)), atol=1e-3)
        assert (sample.width, sample.height) == (reference.width, reference.height)


def write_yolo(root, splits=("train", "val"), names_as="dict"):
    """The sample in Ultralytics' layout: images/<split>/, labels/<split>/, data.yaml with path and names."""
    names = label_names(load_splits({"train": SplitSpec("train", SAMPLE, SAMPLE / "JPEGImages")})[1])
    for split in splits:
        reference = voc_split(split)
        copy_voc([s.image.stem for s in reference.samples], root / "xml", root / "images" / split)
        (root / "labels" / split).mkdir(parents=True)
        for sample in reference.samples:
            lines = [f"{names.index(c)} {(x1 + x2) / 2 / 640:.6f} {(y1 + y2) / 2 / 480:.6f} "
                     f"{(x2 - x1) / 640:.6f} {(y2 - y1) / 480:.6f}" for c, (x1, y1, x2, y2) in
                     zip(sample.classes, sample.boxes)]
            (root / "labels" / split / f"{sample.image.stem}.txt").write_text("\n".join(lines) + "\n")
    config = {"path": ".", **{s: f"images/{s}" for s in splits},
              "names": dict(enumerate(names)) if names_as == "dict" else names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"


# ---------------------------------------------------------------- YOLO


def test_ultralytics_data_yaml_loads_the_voc_boxes_and_label_order(tmp_path):
    specs = read_data_yaml(write_yolo(tmp_path))
    assert {n: s.format for n, s in specs.items()} == {"train": "yolo", "val": "yolo"}
    splits, schema = load_splits(specs)
    voc_splits, voc_schema = load_splits({n: SplitSpec(n, SAMPLE, SAMPLE / "JPEGImages") for n in ("train", "val")})
    assert label_names(schema) == label_names(voc_schema)
    for name in ("train", "val"):
        assert_same_boxes(splits[name], voc_splits[name])


def test_yolo_background_images_polygons_and_otxlite_data_yaml(tmp_path):
    write_yolo(tmp_path, splits=("train",), names_as="list")
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    labels[0].unlink()  # no label file: a background image
    labels[1].write_text("1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n")  # a polygon: its bounding box
    data = tmp_path / "otx.yaml"
    data.write_text("names: [RBC, WBC, Platelets]\ndata:\n"
                    "  train: {ann-files: labels/train, data-roots: images/train, format: yolo}\n")
    split = load_split(read_data_yaml(data)["train"])
    assert split.samples[0].boxes == []
    assert split.samples[1].classes == ["WBC"]
    np.testing.assert_allclose(split.samples[1].boxes, [[64, 48, 192, 192]])


@pytest.mark.parametrize("line, message", [
    ("7 0.5 0.5 0.1 0.1", "class index 7 is not in names (0: WBC, 1: RBC, 2: Platelets)"),
    ("0 0.5 nan 0.1 0.1", "is not four finite numbers"),
    ("0 0.5 0.5 0.1", "expected 'class cx cy w h' (5 values), got 4"),
    ("0 320 240 30 30", "are not fractions of the image size"),
])
def test_broken_yolo_label_lines_name_the_file_and_line(tmp_path, line, message):
    write_yolo(tmp_path, splits=("train",))
    label = sorted((tmp_path / "labels" / "train").glob("*.txt"))[2]
    label.write_text(label.read_text() + line + "\n")
    with pytest.raises(OtxliteError, match=re.escape(message)) as error:
        load_split(read_data_yaml(tmp_path / "data.yaml")["train"])
    assert f"{label} (line " in str(error.value)


def test_yolo_without_names_says_where_to_give_them(tmp_path):
    write_yolo(tmp_path, splits=("train",))
    spec = SplitSpec("train", tmp_path / "labels" / "train", tmp_path / "images" / "train", format="yolo")
    with pytest.raises(OtxliteError, match="give the class names as 'names: \\[...\\]' in data.yaml"):
        load_split(spec)


# ---------------------------------------------------------------- CSV


def test_bccd_csv_with_its_own_column_order_loads_the_voc_boxes():
    for name in ("train", "val", "test"):
        spec = SplitSpec(name, SAMPLE / "boxes.csv", SAMPLE / "JPEGImages",
                         image_list=SAMPLE / "ImageSets" / "Main" / f"{name}.txt")
        assert detect_format(spec) == "csv"
        assert_same_boxes(load_split(spec), voc_split(name))


@pytest.mark.skipif(not (SHARED_BCCD / "test.csv").is_file(), reason="the full BCCD dataset is not here")
def test_full_bccd_csv_matches_its_voc_files():
    root = SHARED_BCCD / "BCCD"
    voc = load_split(SplitSpec("all", root / "Annotations", root / "JPEGImages"))
    table = load_split(SplitSpec("all", SHARED_BCCD / "test.csv", root / "JPEGImages"))
    by_name = {s.image.name: s for s in table.samples}
    assert len(by_name) == len(voc.samples) == 364
    for sample in voc.samples:
        assert by_name[sample.image.name].classes == sample.classes
        assert by_name[sample.image.name].boxes == sample.boxes


def test_csv_columns_are_found_in_any_order_and_spelling_or_named(tmp_path):
    reference = voc_split("val")
    rows = ["label;x1;image;y2;x2;y1"]
    for sample in reference.samples:
        rows += [f"{c};{x1:g};{sample.image.name};{y2:g};{x2:g};{y1:g}" for c, (x1, y1, x2, y2) in
                 zip(sample.classes, sample.boxes)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    assert_same_boxes(load_split(SplitSpec("val", tmp_path / "a.csv", SAMPLE / "JPEGImages")), reference)

    rows = ["picture,kind,left_x,top_y,box_w,box_h,width,height"]
    for sample in reference.samples:
        rows += [f"{sample.image.stem},{c},{x1:g},{y1:g},{x2 - x1:g},{y2 - y1:g},640,480" for c, (x1, y1, x2, y2) in
                 zip(sample.classes, sample.boxes)]
    rows.append(f"{sample_ids('train', 1)[0]},,,,,,640,480")  # an image without boxes
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    columns = {"image": "picture", "class": "kind", "x": "left_x", "y": "top_y", "w": "box_w", "h": "box_h"}
    spec = SplitSpec("val", tmp_path / "b.csv", SAMPLE / "JPEGImages", columns=columns)
    split = load_split(spec)
    assert split.samples[-1].boxes == [] and split.samples[-1].image.exists()
    assert_same_boxes(type(split)("val", split.samples[:-1], None), reference)


@pytest.mark.parametrize("text, message", [
    ("", "empty file; a CSV needs a header row"),
    ("filename,cell_type,xmin,xmax,ymin,ymax\nBloodImage_00000.jpg,RBC,1,2,3\n", "(line 2): 5 fields where the header has 6"),
    ("filename,cell_type,xmin,xmax,ymin,ymax\nBloodImage_00000.jpg,RBC,1,2,x,4\n", "(line 2), columns xmin, ymin, xmax, ymax: box"),
    ("file,kind,xmin,xmax,ymin,ymax\nBloodImage_00000.jpg,RBC,1,2,3,4\n", "cannot find the class column"),
    ("what,ever\n1,2\n", "no image column"),
])
def test_broken_csv_names_the_file_and_row(tmp_path, text, message):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(OtxliteError, match=re.escape(message)) as error:
        load_split(SplitSpec("train", path, SAMPLE / "JPEGImages"))
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- pandas and Hugging Face


def per_image_rows(reference, embed):
    return [{"image": sample.image.read_bytes() if embed else sample.image.name,
             "boxes": [list(b) for b in sample.boxes], "labels": list(sample.classes)} for sample in reference.samples]


def test_pandas_pickle_with_image_bytes_and_parquet_with_paths(tmp_path):
    pandas = pytest.importorskip("pandas")
    reference = voc_split("val")
    pandas.DataFrame(per_image_rows(reference, embed=True)).to_pickle(tmp_path / "cells.pkl")
    split = load_split(SplitSpec("val", tmp_path / "cells.pkl"))
    assert detect_format(SplitSpec("val", tmp_path / "cells.pkl")) == "dataframe"
    assert [s.classes for s in split.samples] == [s.classes for s in reference.samples]
    np.testing.assert_allclose(np.concatenate(split.samples[0].boxes), np.concatenate(reference.samples[0].boxes))
    image, target = DetectionDataset(split.samples, load_splits({"train": SplitSpec("train", SAMPLE)})[1])[0]
    assert image.shape == (3, 480, 640) and len(target["boxes"]) == len(reference.samples[0].boxes)

    pandas.DataFrame(per_image_rows(reference, embed=False)).to_parquet(tmp_path / "cells.parquet")
    spec = SplitSpec("val", tmp_path / "cells.parquet", SAMPLE / "JPEGImages")
    assert detect_format(spec) == "dataframe"
    assert_same_boxes(load_split(spec), reference)


def hf_dataset(reference, datasets, box_format="xywh"):
    names = ["RBC", "WBC", "Platelets"]
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "category": datasets.List(datasets.ClassLabel(names=names))}})
    rows = {"image": [str(s.image) for s in reference.samples], "objects": [
        {"bbox": [[x1, y1, x2 - x1, y2 - y1] if box_format == "xywh" else [x1, y1, x2, y2] for x1, y1, x2, y2 in s.boxes],
         "category": [names.index(c) for c in s.classes]} for s in reference.samples]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_hugging_face_dataset_saved_to_disk_and_as_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, val = voc_split("train"), voc_split("val")
    saved = datasets.DatasetDict({"train": hf_dataset(train, datasets), "validation": hf_dataset(val, datasets)})
    saved.save_to_disk(tmp_path / "cells")
    specs = {n: SplitSpec(n, tmp_path / "cells") for n in ("train", "val")}
    assert detect_format(specs["val"]) == "hf"
    splits, schema = load_splits(specs)
    assert label_names(schema) == ["RBC", "WBC", "Platelets"]
    for name, reference in (("train", train), ("val", val)):
        assert [s.classes for s in splits[name].samples] == [s.classes for s in reference.samples]
        for sample, expected in zip(splits[name].samples, reference.samples):
            np.testing.assert_allclose(np.reshape(sample.boxes, (-1, 4)), np.reshape(expected.boxes, (-1, 4)),
                                       atol=1e-3)
    hf_dataset(val, datasets, box_format="xyxy").to_parquet(tmp_path / "val.parquet")
    spec = SplitSpec("val", tmp_path / "val.parquet")
    assert detect_format(spec) == "hf"
    split = load_split(spec)
    np.testing.assert_allclose(np.concatenate(split.samples[1].boxes), np.concatenate(val.samples[1].boxes), atol=1e-3)


def test_hugging_face_without_the_datasets_package_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "dataset_dict.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(OtxliteError, match=r"needs the 'datasets' package. Install it with: pip install 'otxlite\[hf\]'"):
        load_split(SplitSpec("train", tmp_path / "cells"))


def test_box_layout_is_read_from_how_boxes_fit_their_images_despite_a_zero_area_box(tmp_path, caplog):
    pandas = pytest.importorskip("pandas")
    reference = voc_split("val")
    rows = per_image_rows(reference, embed=False)
    rows[0]["boxes"].append([181.0, 329.0, 181.0, 329.0])  # BCCD has such boxes: x2 == x1 is still corners
    rows[0]["labels"].append("RBC")
    pandas.DataFrame(rows).to_parquet(tmp_path / "cells.parquet")
    with caplog.at_level(logging.INFO, logger="otxlite"):
        split = load_split(SplitSpec("val", tmp_path / "cells.parquet", SAMPLE / "JPEGImages"))
    assert any("boxes read as xyxy" in r.getMessage() for r in caplog.records)
    assert any("dropped 1 box(es) with zero area" in r.getMessage() for r in caplog.records)
    assert_same_boxes(split, reference)
    stated = load_split(SplitSpec("val", tmp_path / "cells.parquet", SAMPLE / "JPEGImages", bbox_format="xywh"))
    assert stated.samples[0].boxes != split.samples[0].boxes
