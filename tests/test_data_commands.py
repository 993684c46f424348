"""`otxlite data check`, `otxlite data convert`, `--val-split`, and the broken-input corpus."""

import json
import re

import numpy as np
import pytest
from conftest import SAMPLE, copy_voc, sample_ids

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import label_names
from otxlite.data.records import load_splits
from otxlite.data.specs import SplitSpec, hold_out_val, read_data_yaml


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_check_summarises_each_split_and_lists_warnings_by_file(voc_copy, otxlite):
    xml = sorted((voc_copy.parent / "train").glob("*.xml"))[1]
    xml.write_text(re.sub(r"<xmax>\d+", "<xmax>1", xml.read_text(), count=1))  # left of xmin: zero area
    second = sorted((voc_copy.parent / "train").glob("*.xml"))[2]
    text = second.read_text()
    start = text.index("<object>")
    second.write_text(text[:start] + text[start:text.index("</object>") + 9] + text[start:])  # a duplicate box
    status, out, _ = otxlite("data", "check", "--data", voc_copy)
    assert status == 0, out
    train = load_splits(read_data_yaml(voc_copy))[0]["train"]
    boxes = sum(len(s.boxes) for s in train.samples)
    assert f"  4 images (0 without boxes), {boxes} boxes" in out
    assert "  image sizes: 640x480 (4)" in out
    assert f"warning zero area: {xml} (object 1): box [" in out
    assert f"warning duplicate: {second} (object 2)" in out
    assert out.strip().endswith("OK: training would run. 2 warning(s): training goes on as each one says.")


def test_check_exits_non_zero_with_every_error_named(voc_copy, otxlite):
    root = voc_copy.parent
    images = sorted((root / "train").glob("*.jpg"))
    images[0].unlink()
    images[1].write_bytes(b"not an image at all")
    val_xml = sorted((root / "val").glob("*.xml"))[0]
    edit(val_xml, "<name>RBC</name>", "<name>Neutrophil</name>")
    status, out, _ = otxlite("data", "check", "--data", voc_copy)
    assert status == 1
    assert f"ERROR missing image: {root / 'train' / images[0].stem}.xml: image {images[0]} not found" in out
    assert f"ERROR unreadable image: {images[1]}: unreadable image (" in out
    assert f"ERROR unknown class: {val_xml} (object" in out and "class 'Neutrophil' never appears" in out
    assert "3 error(s): training would fail" in out


def test_check_on_the_shipped_sample_is_clean(otxlite):
    status, out, _ = otxlite("data", "check", "--data", SAMPLE / "data.yaml")
    assert status == 0
    assert "train: " in out and "  24 images (0 without boxes)" in out and "  8 images" in out
    assert "0 warning(s)" in out


def test_convert_to_coco_round_trips_boxes_label_order_and_images(tmp_path, otxlite):
    status, out, _ = otxlite("data", "convert", "--data", SAMPLE / "data.yaml", "--to", "coco", "--output", tmp_path)
    assert status == 0 and f"Wrote {tmp_path / 'data.yaml'}" in out
    coco = json.loads((tmp_path / "annotations" / "train.json").read_text())
    original, schema = load_splits(read_data_yaml(SAMPLE / "data.yaml"))
    converted, converted_schema = load_splits(read_data_yaml(tmp_path / "data.yaml"))
    assert label_names(converted_schema) == label_names(schema)
    assert [c["name"] for c in coco["categories"]] == label_names(schema)
    for name in ("train", "val", "test"):
        assert len((tmp_path / "images" / name).iterdir().__next__().read_bytes()) > 1000
        for a, b in zip(converted[name].samples, original[name].samples):
            assert a.image.name == b.image.name and a.image.read_bytes() == b.image.read_bytes()
            assert a.classes == b.classes
            np.testing.assert_allclose(np.reshape(a.boxes, (-1, 4)), np.reshape(b.boxes, (-1, 4)))


def test_val_split_is_seeded_disjoint_and_saved_for_later_stages(tmp_path):
    data = tmp_path / "only-train.yaml"
    data.write_text(f"data:\n  train: {{ann-files: {SAMPLE}, data-roots: {SAMPLE / 'JPEGImages'}}}\n"
                    f"  test: {{ann-files: {SAMPLE}, data-roots: {SAMPLE / 'JPEGImages'}}}\n")
    specs = hold_out_val(read_data_yaml(data), 0.25, seed=3, output=tmp_path / "run")
    assert specs == read_data_yaml(tmp_path / "run" / "data.yaml")
    splits, _ = load_splits(specs)
    train, val = ({s.image.stem for s in splits[n].samples} for n in ("train", "val"))
    assert len(val) == 6 and len(train) == 18 and not train & val
    assert train | val == set(sample_ids("train", 24))
    assert {s.image.stem for s in splits["test"].samples} == set(sample_ids("test", 8))
    hold_out_val(read_data_yaml(data), 0.25, seed=3, output=tmp_path / "again")
    assert (tmp_path / "again" / "splits" / "val.txt").read_text() == (tmp_path / "run" / "splits" / "val.txt").read_text()
    other = hold_out_val(read_data_yaml(data), 0.25, seed=4, output=tmp_path / "other")
    assert (tmp_path / "other" / "splits" / "val.txt").read_text() != (tmp_path / "run" / "splits" / "val.txt").read_text()
    assert other["val"].subset == "train"


@pytest.mark.parametrize("fraction, message", [(0.0, "Give a fraction between 0 and 1"),
                                               (0.99, "holds out 24")])
def test_val_split_refuses_fractions_that_empty_a_side(tmp_path, fraction, message):
    specs = {"train": SplitSpec("train", SAMPLE, SAMPLE / "JPEGImages")}
    with pytest.raises(OtxliteError, match=message):
        hold_out_val(specs, fraction, 0, tmp_path)


def test_val_split_with_a_val_split_already_is_an_error(tmp_path):
    with pytest.raises(OtxliteError, match="already has a val split"):
        hold_out_val(read_data_yaml(SAMPLE / "data.yaml"), 0.2, 0, tmp_path)


# ---------------------------------------------------------------- broken inputs, one per kind


def first(folder, pattern):
    return sorted(folder.glob(pattern))[0]


def broken_xml(root):
    xml = first(root / "train", "*.xml")
    xml.write_text(xml.read_text()[:200])
    return root / "data.yaml", [str(xml), "unreadable XML"], 1


def empty_xml(root):
    xml = first(root / "val", "*.xml")
    xml.write_text("")
    return root / "data.yaml", [str(xml), "unreadable XML (no element found"], 1


def nan_coordinate(root):
    xml = first(root / "train", "*.xml")
    edit(xml, "<ymin>", "<ymin>nan")
    return root / "data.yaml", [f"{xml} (object 1): box [", "is not four finite numbers"], 1


def negative_coordinate(root):
    xml = first(root / "train", "*.xml")
    edit(xml, "<xmin>", "<xmin>-")
    return root / "data.yaml", [f"warning clipped: {xml} (object 1): box [-"], 0


def truncated_jpeg(root):
    image = first(root / "val", "*.jpg")
    image.write_bytes(image.read_bytes()[:-20])  # decodable, as viewers show it, with its last bytes grey
    return root / "data.yaml", [f"warning truncated: {image}: the file ends early"], 0


def not_an_image(root):
    image = first(root / "val", "*.jpg")
    image.write_bytes(b"\xff\xd8 this is no JPEG")
    return root / "data.yaml", [f"ERROR unreadable image: {image}"], 1


def broken_yaml(root):
    (root / "data.yaml").write_text("data:\n  train: {ann-files: train\n")
    return root / "data.yaml", [f"Error: {root / 'data.yaml'}: invalid YAML at line"], 2


def empty_yaml(root):
    (root / "data.yaml").write_text("")
    return root / "data.yaml", [f"Error: {root / 'data.yaml'}: expected a 'data:' mapping"], 2


def broken_json(root):
    (root / "train.json").write_text('{"images": [')
    (root / "data.yaml").write_text("data:\n  train: {ann-files: train.json, data-roots: train}\n")
    return root / "data.yaml", [f"{root / 'train.json'}: invalid JSON at line 1"], 1


def short_coco_box(root):
    (root / "train.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [
        {"id": 1, "name": "RBC"}], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}))
    (root / "data.yaml").write_text("data:\n  train: {ann-files: train.json, data-roots: train}\n")
    return root / "data.yaml", [f"{root / 'train.json'} (annotations[0]): box [1, 2, 3] is not four finite"], 1


def csv_data(root, text, columns=""):
    (root / "boxes.csv").write_text(text)
    (root / "data.yaml").write_text(f"data:\n  train: {{ann-files: boxes.csv, data-roots: train{columns}}}\n")
    return root / "data.yaml"


def csv_short_row(root):
    header = (SAMPLE / "boxes.csv").read_text().splitlines()[:3]
    data = csv_data(root, "\n".join(header) + "\nBloodImage_00001.jpg,RBC,1,2,3\n")
    return data, [f"{root / 'boxes.csv'} (line 4): 5 fields where the header has 6"], 1


def csv_wrong_column(root):
    data = csv_data(root, (SAMPLE / "boxes.csv").read_text(), ", columns: {class: label}")
    return data, [f"{root / 'boxes.csv'}: columns ['label'] (from 'columns:' in data.yaml) are not in the table"], 1


def csv_empty(root):
    return csv_data(root, ""), [f"{root / 'boxes.csv'}: empty file"], 1


def yolo_index_beyond_names(root):
    (root / "labels").mkdir()
    image = first(root / "train", "*.jpg")
    (root / "labels" / f"{image.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("names: [RBC, WBC, Platelets]\n"
                                    "data:\n  train: {ann-files: labels, data-roots: train, format: yolo}\n")
    return root / "data.yaml", [f"{root / 'labels' / image.stem}.txt (line 2): class index 3 is not in names"], 1


def empty_split(root):
    (root / "val.json").write_text(json.dumps({"images": [], "categories": [], "annotations": []}))
    (root / "data.yaml").write_text("data:\n  train: {ann-files: train}\n  val: {ann-files: val.json}\n")
    return root / "data.yaml", [f"ERROR empty split: {root / 'val.json'}: split 'val' has no images"], 1


@pytest.mark.parametrize("breakage", [broken_xml, empty_xml, nan_coordinate, negative_coordinate, truncated_jpeg,
                                      not_an_image,
                                      broken_yaml, empty_yaml, broken_json, short_coco_box, csv_short_row,
                                      csv_wrong_column, csv_empty, yolo_index_beyond_names, empty_split])
def test_each_broken_input_gets_one_clear_message_naming_the_file(voc_copy, otxlite, breakage):
    data, expected, expected_status = breakage(voc_copy.parent)
    status, out, err = otxlite("data", "check", "--data", data)
    assert status == expected_status, out + err
    for fragment in expected:
        assert fragment in out + err
    assert "Traceback" not in out + err


def test_train_with_val_split_then_eval_on_the_saved_data_yaml(tmp_path, small_template, otxlite, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as users type them
    data = tmp_path / "train-only.yaml"
    copy_voc(sample_ids("train", 6), tmp_path / "train", tmp_path / "train")
    copy_voc(sample_ids("test", 2), tmp_path / "test", tmp_path / "test")
    data.write_text("data:\n  train: {ann-files: train}\n  test: {ann-files: test}\n")
    status, _, err = otxlite("train", small_template("ssdlite320_mobilenet_v3_large"), "--data", data.name,
                             "--output", "run", "--no-pretrained", "--val-split", "0.34",
                             "params", "--learning_parameters.num_iters", "1")
    assert status == 0, err
    run = tmp_path / "run"
    log = (run / "logs" / "train.log").read_text()
    assert "Held out 2 of 6 train images as val (--val-split 0.34, seed 0). Later stages see the same split " \
           "with --data run/data.yaml" in log
    assert "train split: 4 images" in log and "val split: 2 images" in log
    held_out = (run / "splits" / "val.txt").read_text().split()
    assert len(held_out) == 2 and all(line.startswith(str(tmp_path / "train")) for line in held_out)
    monkeypatch.chdir(tmp_path / "test")
    status, out, err = otxlite("eval", "--load-weights", run / "weights.pth", "--data", run / "data.yaml")
    assert status == 0, err
    assert "on 2 test images" in err and "mAP@0.5" in err
