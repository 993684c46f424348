import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, copy_voc, sample_ids, voc_boxes, write_coco

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import LabelSchema, label_names
from otxlite.data.augment import Pipeline
from otxlite.data.formats import Sample
from otxlite.data.loader import DetectionDataset, GroupedBatchSampler, adaptive_repeats
from otxlite.data.records import load_split, load_splits
from otxlite.data.specs import SplitSpec, read_data_yaml, split_specs


def voc_root_specs():
    return {name: SplitSpec(name, SAMPLE, SAMPLE / "JPEGImages") for name in ("train", "val", "test")}


def test_voc_root_split_lists_pick_the_images_and_keep_every_box():
    splits, schema = load_splits(voc_root_specs())
    for name, count in (("train", 24), ("val", 8), ("test", 8)):
        samples = splits[name].samples
        assert [s.image.stem for s in samples] == sample_ids(name, count)
        for sample in samples:
            expected = voc_boxes(SAMPLE / "Annotations" / f"{sample.image.stem}.xml")
            assert list(zip(sample.classes, sample.boxes)) == [(c, b) for c, b in expected]
            assert (sample.width, sample.height) == (640, 480)
    first_seen = list(dict.fromkeys(c for s in splits["train"].samples for c in s.classes))
    assert label_names(schema) == first_seen
    assert [label["id"] for label in schema["labels"]] == [1, 2, 3]


def test_voc_from_a_split_list_file_and_from_plain_folders_agree(tmp_path):
    from_list = load_split(SplitSpec("anything", SAMPLE / "ImageSets" / "Main" / "val.txt"))
    copy_voc(sample_ids("val", 8), tmp_path / "labels", tmp_path / "pictures")
    from_folders = load_split(SplitSpec("val", tmp_path / "labels", tmp_path / "pictures"))
    assert [(s.image.name, s.boxes, s.classes) for s in from_list.samples] == \
           [(s.image.name, s.boxes, s.classes) for s in from_folders.samples]


def test_data_yaml_paths_are_relative_to_its_folder_and_flags_override(tmp_path):
    data = tmp_path / "sub" / "data.yaml"
    data.parent.mkdir()
    data.write_text("data:\n  train: {ann-files: a.json, data-roots: imgs}\n  val: {ann-files: v.json}\n")
    specs = read_data_yaml(data)
    assert specs["train"].ann_files == tmp_path / "sub" / "a.json"
    assert specs["train"].data_roots == tmp_path / "sub" / "imgs"
    assert specs["val"].data_roots is None
    specs = split_specs(data, val_ann_files="other.json", val_data_roots="x")
    assert specs["val"].ann_files == Path("other.json").absolute()


@pytest.mark.parametrize("text, message", [
    ("data: [unclosed\n", "invalid YAML at line"),
    ("nothing: here\n", "expected a 'data:' mapping"),
    ("data:\n  train: {data-roots: x}\n", r"x: not found \(data-roots of split 'train' in .*data.yaml\)"),
    ("data:\n  train: {format: coco}\n", "split 'train' needs 'ann-files' or 'data-roots'"),
    ("data:\n  train: {ann-files: x, roots: y}\n", "unknown key 'roots'"),
])
def test_bad_data_yaml_names_the_file(tmp_path, text, message):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(OtxliteError, match=message) as error:
        read_data_yaml(path)
    assert str(path) in str(error.value)


def coco_for(tmp_path, ids, categories=({"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"},
                                        {"id": 3, "name": "Platelets"})):
    """A COCO file holding the sample's VOC boxes for ids."""
    names = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for index, image_id in enumerate(ids):
        shutil.copy(SAMPLE / "JPEGImages" / f"{image_id}.jpg", tmp_path)
        images.append({"id": index + 10, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for name, (x1, y1, x2, y2) in voc_boxes(SAMPLE / "Annotations" / f"{image_id}.xml"):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 10, "category_id": names[name],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return write_coco(tmp_path / "ann.json", images, list(categories), annotations)


def test_coco_loads_the_same_boxes_as_voc_with_labels_in_category_id_order(tmp_path):
    ids = sample_ids("train", 3)
    categories = [{"id": 7, "name": "WBC"}, {"id": 2, "name": "Platelets"}, {"id": 5, "name": "RBC"},
                  {"id": 0, "name": "cells"}]  # Roboflow-style unused super-category
    split = load_split(SplitSpec("train", coco_for(tmp_path, ids, categories)))
    assert split.class_order == ["Platelets", "RBC", "WBC"]
    voc = load_split(SplitSpec("train", SAMPLE / "ImageSets" / "Main" / "train.txt"))
    for coco_sample, voc_sample in zip(split.samples, voc.samples[:3]):
        assert coco_sample.image.name == voc_sample.image.name
        assert coco_sample.classes == voc_sample.classes
        np.testing.assert_allclose(coco_sample.boxes, voc_sample.boxes)


def test_zero_area_boxes_are_dropped_with_one_counted_warning_and_boxes_are_clipped(tmp_path, caplog):
    shutil.copy(SAMPLE / "JPEGImages" / f"{sample_ids('train', 1)[0]}.jpg", tmp_path / "a.jpg")
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": bbox} for i, bbox in enumerate(
        [[10, 10, 0, 20], [30, 30, 5, 0], [-20, 400, 100, 200], [700, 10, 20, 20], [50, 50, 10, 10]])]
    path = write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "a.jpg"}],
                      [{"id": 1, "name": "RBC"}], annotations)
    with caplog.at_level(logging.WARNING, logger="otxlite"):
        split = load_split(SplitSpec("train", path))
    assert split.samples[0].boxes == [[0, 400, 80, 480], [50, 50, 60, 60]]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("dropped 3 box(es) with zero area" in w and str(path) in w for w in warnings)
    assert any("clipped 1 box(es)" in w and "(annotations[2])" in w for w in warnings)


def test_a_class_training_never_saw_is_an_error_naming_the_file(tmp_path):
    copy_voc(sample_ids("train", 1), tmp_path / "train", tmp_path / "train")
    copy_voc(sample_ids("val", 1), tmp_path / "val", tmp_path / "val")
    xml = next((tmp_path / "val").glob("*.xml"))
    xml.write_text(xml.read_text().replace("<name>RBC</name>", "<name>Neutrophil</name>", 1))
    specs = {"train": SplitSpec("train", tmp_path / "train"), "val": SplitSpec("val", tmp_path / "val")}
    with pytest.raises(OtxliteError, match="class 'Neutrophil' never appears in the training split") as error:
        load_splits(specs)
    assert str(xml) in str(error.value)


def test_a_val_class_that_coco_train_declares_is_kept_with_a_warning(tmp_path, caplog):
    categories = [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}, {"id": 3, "name": "Platelets"},
                  {"id": 4, "name": "Neutrophil"}]
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    train = coco_for(tmp_path / "train", sample_ids("train", 2), categories)
    val = coco_for(tmp_path / "val", sample_ids("val", 1), categories)
    coco = json.loads(val.read_text())
    coco["annotations"][0]["category_id"] = 4
    val.write_text(json.dumps(coco))
    specs = {"train": SplitSpec("train", train), "val": SplitSpec("val", val)}
    with caplog.at_level(logging.WARNING, logger="otxlite"):
        _, schema = load_splits(specs)
    assert label_names(schema)[-1] == "Neutrophil"
    assert "the model cannot learn them: Neutrophil" in caplog.text

    coco["annotations"][0]["category_id"] = 5
    coco["categories"].append({"id": 5, "name": "Basophil"})
    val.write_text(json.dumps(coco))
    with pytest.raises(OtxliteError, match="class 'Basophil' never appears in the training split"):
        load_splits(specs)


def test_missing_image_and_broken_annotation_files_are_clear_errors(tmp_path):
    copy_voc(sample_ids("train", 2), tmp_path / "xml", tmp_path / "img")
    first = sorted((tmp_path / "img").iterdir())[0]
    first.unlink()
    with pytest.raises(OtxliteError, match=f"image {first} not found"):
        load_split(SplitSpec("train", tmp_path / "xml", tmp_path / "img"))

    xml = sorted((tmp_path / "xml").iterdir())[1]
    xml.write_text("<annotation><object>")
    with pytest.raises(OtxliteError, match="unreadable XML") as error:
        load_split(SplitSpec("train", tmp_path / "xml", tmp_path / "img"))
    assert str(xml) in str(error.value)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [')
    with pytest.raises(OtxliteError, match="bad.json: invalid JSON at line 1"):
        load_split(SplitSpec("train", bad_json))


def test_corrupt_image_is_an_error_naming_it(tmp_path):
    copy_voc(sample_ids("train", 1), tmp_path / "xml", tmp_path / "img")
    image = next((tmp_path / "img").iterdir())
    image.write_bytes(b"not a jpeg")
    with pytest.raises(OtxliteError, match="unreadable image") as error:
        load_split(SplitSpec("train", tmp_path / "xml", tmp_path / "img"))
    assert str(image) in str(error.value)


def test_an_empty_split_is_an_error(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("")
    with pytest.raises(OtxliteError, match="no .xml annotation files for split 'train'"):
        load_split(SplitSpec("train", tmp_path))
    empty = write_coco(tmp_path / "empty.json", [], [{"id": 1, "name": "RBC"}], [])
    with pytest.raises(OtxliteError, match="split 'val' has no images"):
        load_split(SplitSpec("val", empty))


def test_dataset_flip_moves_boxes_with_the_image():
    split = load_split(SplitSpec("train", SAMPLE / "ImageSets" / "Main" / "train.txt"))
    schema = LabelSchema.of_classes(split.class_order)
    plain = DetectionDataset(split.samples[:1], schema)
    image, target = plain[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 480, 640)
    for seed in range(20):  # find a seed whose draw flips
        flipped, flipped_target = DetectionDataset(split.samples[:1], schema,
                                                   Pipeline({"RandomHorizontalFlip": {"p": 0.5}}), seed=seed)[0]
        if not torch.equal(flipped, image):
            break
    assert torch.equal(flipped, image.flip(-1))
    x1, y1, x2, y2 = target["boxes"][0]
    assert flipped_target["boxes"][0].tolist() == [640 - x2, y1, 640 - x1, y2]
    assert torch.equal(flipped_target["labels"], target["labels"])


def test_grouped_batches_keep_wide_and_tall_images_apart_and_depend_only_on_seed_and_epoch():
    samples = [Sample(image=None, source="", width=w, height=h) for w, h in [(640, 480)] * 5 + [(480, 640)] * 4]
    sampler = GroupedBatchSampler(samples, batch_size=2, seed=3)
    assert all(epoch == 0 for b in sampler for _, epoch in b)  # items are (index, epoch) for the dataset
    batches = [[i for i, _ in b] for b in sampler]
    assert len(batches) == len(sampler) == 4  # wide: 2 + 3 (no batch of one), tall: 2 + 2
    assert sorted(i for b in batches for i in b) == list(range(9))
    for batch in batches:
        assert len({samples[i].width > samples[i].height for i in batch}) == 1
    again = GroupedBatchSampler(samples, batch_size=2, seed=3)
    assert [[i for i, _ in b] for b in again] == batches
    again.set_epoch(1)
    assert [[i for i, _ in b] for b in again] != batches
    assert all(epoch == 1 for b in again for _, epoch in b)


def test_a_small_training_set_is_passed_over_several_times_an_epoch_each_pass_augmented_anew():
    assert [adaptive_repeats(images, 16) for images in (16, 80, 205, 700, 5000)] == [5, 3, 2, 1, 1]  # OTX's rule
    samples = [Sample(image=None, source="", width=w, height=h) for w, h in [(640, 480)] * 5 + [(480, 640)] * 4]
    once, three = GroupedBatchSampler(samples, 2, seed=3), GroupedBatchSampler(samples, 2, seed=3, repeats=3)
    three.set_epoch(1)  # epoch 1 is passes 3, 4 and 5
    items = [item for batch in three for item in batch]
    assert sorted(items) == sorted((index, number) for index in range(9) for number in (3, 4, 5))
    assert len(three) == 3 * len(once)
    once.set_epoch(3)  # a pass is ordered as the epoch of the same number without repeats: (seed, number) alone
    assert list(three)[:len(once)] == list(once)


@pytest.mark.parametrize("wide, tall, batch_size", [(5, 4, 2), (3, 0, 2), (1, 0, 4), (7, 1, 3), (4, 4, 1)])
def test_grouped_batches_never_hold_a_single_image_when_others_exist(wide, tall, batch_size):
    samples = [Sample(image=None, source="", width=640, height=480)] * wide + \
              [Sample(image=None, source="", width=480, height=640)] * tall
    batches = [[i for i, _ in b] for b in GroupedBatchSampler(samples, batch_size, seed=0)]
    assert len(batches) == len(GroupedBatchSampler(samples, batch_size, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(wide + tall))
    if wide + tall > 1 and batch_size > 1:
        assert min(len(b) for b in batches) > 1


def test_a_wide_and_a_tall_image_share_one_batch():
    """Two lone images (one wide, one tall) train as one batch of two, not as an error or two single-image batches."""
    samples = [Sample("wide.jpg", "test", width=640, height=480), Sample("tall.jpg", "test", width=480, height=640)]
    assert [sorted(batch) for batch in GroupedBatchSampler(samples, 2, 0).batches()] == [[(0, 0), (1, 0)]]
