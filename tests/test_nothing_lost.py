"""Nothing lost, nothing hung, nothing crashed: outputs never overwrite inputs, native code never sees unchecked
coordinates, only regular files are read, and every skip is a counted warning."""

import hashlib
import json
import os
import shutil
import sys

import pytest
import torch
from conftest import SAMPLE, copy_voc, sample_ids, spawn
from PIL import Image


def digest(folder):
    """A fingerprint of every file under folder (or of one file)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture
def model_folder(tmp_path):
    """A folder as export writes it (file contents do not matter: the refusal comes before any is read)."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("openvino.xml", "openvino.bin", "model.onnx", "weights.pth", "label_schema.json", "config.json"):
        (folder / name).write_bytes(os.urandom(64))
    return folder


@pytest.fixture
def dataset(tmp_path):
    """A copy of the BCCD sample, whose files the commands must leave as they are."""
    shutil.copytree(SAMPLE, tmp_path / "bccd")
    return tmp_path / "bccd"


def refusals(model_folder, dataset):
    """(command arguments, the input it would have written over) for every command that writes."""
    model, data = model_folder / "openvino.xml", dataset / "data.yaml"
    weights = model_folder / "weights.pth"
    return {
        "deploy over its model": (["deploy", "--load-weights", model, "--output", model], model),
        "deploy into the model's folder": (["deploy", "--load-weights", model, "--output", model_folder / "x.zip"],
                                           None),
        "data convert over the dataset": (["data", "convert", "--data", data, "--output", dataset], data),
        "data convert into the images": (["data", "convert", "--data", data, "--output",
                                          dataset / "JPEGImages" / "coco"], None),
        "train into the dataset": (["train", "ssdlite320_mobilenet_v3_large", "--data", data, "--no-pretrained",
                                    "--output", dataset], data),
        "train over its --load-weights": (["train", "ssdlite320_mobilenet_v3_large", "--data", data,
                                           "--load-weights", weights, "--output", model_folder], weights),
        "eval into the model's folder": (["eval", "--load-weights", model, "--data", data, "--output", model_folder],
                                         model),
        "eval --save-performance over annotations": (["eval", "--load-weights", model, "--data", data,
                                                      "--save-performance", dataset / "Annotations"], None),
        "export over its model's folder": (["export", "--load-weights", weights, "--output", model_folder],
                                           weights),
        "optimize over its model's folder": (["optimize", "--load-weights", model, "--data", data, "--output",
                                              model_folder], model),
        "predict over an input image": (["predict", "--load-weights", model, "--input", dataset / "JPEGImages",
                                         "--output", dataset / "JPEGImages" / "BloodImage_00000.jpg"], None),
        "demo into its input folder": (["demo", "--load-weights", model, "--input", dataset / "JPEGImages",
                                        "--output", dataset / "JPEGImages" / "demo"], None),
    }


CASES = ["deploy over its model", "deploy into the model's folder", "data convert over the dataset",
         "data convert into the images", "train into the dataset", "train over its --load-weights",
         "eval into the model's folder", "eval --save-performance over annotations", "export over its model's folder",
         "optimize over its model's folder", "predict over an input image", "demo into its input folder"]


@pytest.mark.parametrize("case", CASES)
def test_no_command_writes_over_its_inputs(case, model_folder, dataset, otxlite):
    args, named = refusals(model_folder, dataset)[case]
    if case == "deploy into the model's folder":  # a new file beside the model is allowed: it goes on to read it
        status, _, err = otxlite(*args)
        assert "never writes over its inputs" not in err
        return
    before = digest(model_folder), digest(dataset)
    status, out, err = otxlite(*args)
    assert status == 2, err
    assert "otxlite never writes over its inputs" in err and len(err.strip().splitlines()) == 1, err
    output = args[args.index("--output") + 1] if "--output" in args else args[args.index("--save-performance") + 1]
    assert str(output) in err and (named is None or str(named) in err)
    assert (digest(model_folder), digest(dataset)) == before


# ---------------------------------------------------------------- native code never sees unchecked numbers


def run_otxlite(*args, timeout=180):
    """otxlite in its own process, as a user runs it: (exit status, stdout, stderr); a signal is a negative status."""
    result = spawn([sys.executable, "-m", "otxlite", *args], timeout)
    return result.returncode, result.stdout, result.stderr


def yolo_seg(folder, label_lines, names="[person]"):
    """A YOLO-seg dataset of one 64x48 image whose label file holds label_lines."""
    (folder / "images" / "train").mkdir(parents=True)
    (folder / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (64, 48), "white").save(folder / "images" / "train" / "a.jpg")
    (folder / "labels" / "train" / "a.txt").write_text("".join(line + "\n" for line in label_lines))
    (folder / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/train\nnames: {names}\n")
    return folder / "data.yaml"


GOOD_POLYGON = "0 0.1 0.1 0.6 0.1 0.6 0.7 0.1 0.7"


@pytest.mark.parametrize("line, says", [
    ("0 0.1 0.1 nan 0.2 0.3 0.3 0.1 0.4", "holds NaN or infinity"),
    ("0 0.1 0.1 inf 0.2 0.3 0.3 0.1 0.4", "holds NaN or infinity"),
    ("0 0.1 0.1 2000000 0.2 0.3 3000000 0.1 0.4", "are not fractions of the image size"),
])
def test_a_yolo_polygon_of_nan_or_huge_numbers_is_an_error_naming_its_line(tmp_path, line, says):
    status, out, err = run_otxlite("data", "check", "--data", yolo_seg(tmp_path, [GOOD_POLYGON, line]))
    assert status == 1, err  # data check's "training would fail", not a signal
    assert "a.txt (line 2): " in out and says in out


def coco_polygons(folder, polygons):
    Image.new("RGB", (64, 48), "white").save(folder / "a.jpg")
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0,
                    "segmentation": [polygon]} for i, polygon in enumerate(polygons)]
    (folder / "train.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 64,
                                                               "height": 48}],
                                                   "categories": [{"id": 1, "name": "part"}],
                                                   "annotations": annotations}))
    (folder / "data.yaml").write_text("data:\n  train: {ann-files: train.json, data-roots: .}\n")
    return folder / "data.yaml"


def test_coco_polygons_of_huge_numbers_or_too_few_points_are_counted_warnings(tmp_path):
    data = coco_polygons(tmp_path, [[5, 5, 25, 5, 25, 25, 5, 25], [5, 5, 3e9, 5, 25, 4e9],
                                    [5, 5, 25, 25, 5, 5, 25, 25]])
    status, out, err = run_otxlite("data", "check", "--data", data)
    assert status == 0, err + out
    assert "(annotations[1])" in out and "times the 64x48 image's size" in out
    assert "(annotations[2])" in out and "has fewer than 3 distinct points" in out and "2 warning(s)" in out


def test_a_coco_polygon_holding_nan_is_an_error_naming_it(tmp_path):
    status, out, _ = run_otxlite("data", "check", "--data", coco_polygons(tmp_path, [[5, 5, float("nan"), 5, 25, 25]]))
    assert status == 1 and "(annotations[0]): segmentation polygons must be lists of x, y numbers" in out


def test_a_two_point_polygon_in_a_segmentation_label_file_is_reported(tmp_path):
    status, out, _ = run_otxlite("data", "check", "--data", yolo_seg(tmp_path, [GOOD_POLYGON, "0 0.1 0.1 0.5 0.5"]))
    assert status == 0 and "a.txt (line 2)" in out and "fewer than 3 points" in out


# ---------------------------------------------------------------- only regular files are read


def test_a_fifo_named_like_an_image_is_skipped_with_a_warning_never_read(tmp_path):
    data = yolo_seg(tmp_path, [GOOD_POLYGON])
    os.mkfifo(tmp_path / "images" / "train" / "pipe.jpg")
    (tmp_path / "labels" / "train" / "pipe.txt").write_text(GOOD_POLYGON + "\n")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "images" / "train" / "dangling.jpg")
    status, out, err = run_otxlite("data", "check", "--data", data, timeout=120)  # it used to block forever
    assert status == 0, err + out
    assert "warning: " in err and "skipped 2 entries named like images that are not regular files" in err
    assert "pipe.jpg" in err and "dangling.jpg" in err


def test_a_fifo_an_annotation_names_is_an_error_not_a_hang(tmp_path):
    copy_voc(sample_ids("train", 1), tmp_path / "voc", tmp_path / "voc")
    image = next((tmp_path / "voc").glob("*.jpg"))
    image.unlink()
    os.mkfifo(image)
    (tmp_path / "data.yaml").write_text("data:\n  train: {ann-files: voc}\n")
    status, out, err = run_otxlite("data", "check", "--data", tmp_path / "data.yaml", timeout=120)
    assert status == 1 and f"{image}: not a regular file" in out


def test_a_fifo_label_file_is_an_error_not_a_hang(tmp_path):
    data = yolo_seg(tmp_path, [GOOD_POLYGON])
    (tmp_path / "labels" / "train" / "a.txt").unlink()
    os.mkfifo(tmp_path / "labels" / "train" / "a.txt")
    status, out, err = run_otxlite("data", "check", "--data", data, timeout=120)
    assert status == 1 and "a.txt: not a regular file" in out


# ---------------------------------------------------------------- every skip reported the same way


def test_predict_skips_are_counted_warnings_naming_the_file(tmp_path, exported, otxlite_subprocess):
    _, export, _ = exported
    (tmp_path / "in").mkdir()
    shutil.copy(next(SAMPLE.glob("JPEGImages/*.jpg")), tmp_path / "in" / "good.jpg")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
    status, _, err = otxlite_subprocess("predict", "--load-weights", export / "openvino.xml", "--input",
                                        tmp_path / "in", "--output", tmp_path / "out" / "p.json")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "broken.jpg" in line or "Skipped" in line]
    assert len(warnings) == 2 and all(line.startswith("warning: ") for line in warnings), err


def test_a_missing_ir_weights_file_is_named(exported, tmp_path, otxlite_subprocess):
    _, export, data = exported
    for name in ("openvino.xml", "label_schema.json"):
        shutil.copy(export / name, tmp_path)
    status, _, err = otxlite_subprocess("eval", "--load-weights", tmp_path / "openvino.xml", "--data", data)
    assert status == 2 and f"its weights file {tmp_path / 'openvino.bin'} is missing" in err, err


# ---------------------------------------------------------------- accept what peers accept


def test_yolo_classes_are_indices_even_when_names_are_numbers_and_0_0_is_0(tmp_path):
    from otxlite.data.records import load_split
    from otxlite.data.specs import read_data_yaml

    data = yolo_seg(tmp_path, ["1 0.5 0.5 0.2 0.2", "0.0 0.3 0.3 0.2 0.2"], names="[5, 7]")
    split = load_split(read_data_yaml(data)["train"])
    assert split.samples[0].classes == ["7", "5"]


# ---------------------------------------------------------------- a metric that cannot mean anything


def images_without_objects(folder, count=2):
    """A COCO split of sample images with no annotations."""
    folder.mkdir()
    images = []
    for i, image in enumerate(sorted(SAMPLE.glob("JPEGImages/*.jpg"))[:count]):
        shutil.copy(image, folder)
        images.append({"id": i + 1, "file_name": image.name, "width": 640, "height": 480})
    (folder / "empty.json").write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "RBC"}],
                                                   "annotations": []}))
    return folder / "empty.json"


def test_eval_on_a_test_split_without_objects_is_an_error(exported, tmp_path, otxlite_subprocess):
    weights, _, _ = exported
    annotations = images_without_objects(tmp_path / "empty")
    status, _, err = otxlite_subprocess("eval", "--load-weights", weights, "--test-ann-files", annotations,
                                        "--test-data-roots", tmp_path / "empty")
    assert status == 2 and "the test split holds no objects" in err and "empty.json" in err, err


def test_train_with_a_val_split_without_objects_warns_and_keeps_the_last_epoch(tiny_voc, tmp_path, otxlite):
    annotations = images_without_objects(tmp_path / "empty")
    status, _, err = otxlite("train", "ssdlite320_mobilenet_v3_large", "--train-ann-files",
                             tiny_voc.parent / "train" / "xml", "--train-data-roots",
                             tiny_voc.parent / "train" / "images", "--val-ann-files", annotations,
                             "--val-data-roots", tmp_path / "empty", "--no-pretrained", "--output", tmp_path / "run",
                             "params", "--learning_parameters.num_iters", "2", "--learning_parameters.batch_size", "2")
    assert status == 0, err
    assert "warning: val split: no objects in its 2 images" in err and "early stopping is off" in err
    assert torch.load(tmp_path / "run" / "weights.pth", weights_only=True)["epoch"] == 2


# ---------------------------------------------------------------- mistakes that used to pass silently


def test_resume_with_another_template_says_which_the_run_used(tiny_voc, tmp_path, otxlite):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"format_version": 1, "template": {"id": "ssdlite320_mobilenet_v3_large"}},
               tmp_path / "run" / "checkpoints" / "last.pth")
    status, _, err = otxlite("train", "fasterrcnn_mobilenet_v3_large_320_fpn", "--data", tiny_voc, "--resume",
                             "--output", tmp_path / "run")
    assert status == 2, err
    assert "trains ssdlite320_mobilenet_v3_large, not fasterrcnn_mobilenet_v3_large_320_fpn" in err


def test_an_unknown_model_argument_is_an_error_naming_it_and_the_accepted_ones(tiny_voc, tmp_path, otxlite):
    status, _, err = otxlite("train", "fasterrcnn_mobilenet_v3_large_320_fpn", "--data", tiny_voc, "--no-pretrained",
                             "--output", tmp_path / "run", "params", "--model.kwargs.min_sise", "300")
    assert status == 2, err
    assert "model.kwargs min_sise: not an argument" in err and "did you mean min_size?" in err
    assert "box_batch_size_per_image" in err  # the accepted ones are listed


def test_more_cpu_processes_than_cores_is_an_error(tiny_voc, tmp_path, otxlite):
    status, _, err = otxlite("train", "ssdlite320_mobilenet_v3_large", "--data", tiny_voc, "--no-pretrained",
                             "--device", "cpu", "--devices", "99", "--output", tmp_path / "run")
    assert status == 2 and f"--devices 99: this machine gives otxlite {len(os.sched_getaffinity(0))} CPU" in err, err


# ---------------------------------------------------------------- data check reports orphans and inconsistencies


def test_data_check_reports_orphan_labels_and_images_without_labels(tmp_path, otxlite):
    data = yolo_seg(tmp_path, [GOOD_POLYGON])
    (tmp_path / "labels" / "train" / "ghost.txt").write_text(GOOD_POLYGON + "\n")
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "train" / "plain.jpg")
    status, out, _ = otxlite("data", "check", "--data", data)
    assert status == 0 and "warning orphan: " in out and "ghost.txt: an annotation file without its image" in out
    assert "info: 1 image(s) without an annotation file of their own" in out


def test_data_check_reports_orphan_mask_images(tmp_path, otxlite):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "images" / "a.png")
    mask = Image.new("L", (32, 24))
    mask.paste(1, (4, 4, 20, 20))
    mask.save(tmp_path / "masks" / "a_mask.png")
    mask.save(tmp_path / "masks" / "lost_mask.png")
    (tmp_path / "data.yaml").write_text("data:\n  train: {ann-files: masks, data-roots: images, names: [part]}\n")
    status, out, _ = otxlite("data", "check", "--data", tmp_path / "data.yaml")
    assert status == 0 and "lost_mask.png: an annotation file without its image" in out


def test_an_empty_class_name_is_an_error(tmp_path, otxlite):
    data = coco_polygons(tmp_path, [[5, 5, 25, 5, 25, 25, 5, 25]])
    coco = json.loads((tmp_path / "train.json").read_text())
    coco["categories"][0]["name"] = "  "
    (tmp_path / "train.json").write_text(json.dumps(coco))
    status, out, _ = otxlite("data", "check", "--data", data)
    assert status == 1 and "(annotations[0]): the class name is empty" in out


def test_a_box_far_from_its_own_polygon_is_a_warning(tmp_path, otxlite):
    data = coco_polygons(tmp_path, [[5, 5, 25, 5, 25, 25, 5, 25]])
    coco = json.loads((tmp_path / "train.json").read_text())
    coco["annotations"][0]["bbox"] = [40, 25, 20, 20]
    (tmp_path / "train.json").write_text(json.dumps(coco))
    status, out, _ = otxlite("data", "check", "--data", data)
    assert status == 0 and "(annotations[0]): box [40, 25, 60, 45] and its polygon overlap at IoU 0.00" in out


def test_an_unknown_split_name_is_a_warning(tmp_path, otxlite):
    copy_voc(sample_ids("train", 1), tmp_path / "voc", tmp_path / "voc")
    (tmp_path / "data.yaml").write_text("data:\n  train: {ann-files: voc}\n  vall: {ann-files: voc}\n")
    status, out, _ = otxlite("data", "check", "--data", tmp_path / "data.yaml")
    assert "warning unknown split: 'vall'" in out and "did you mean val?" in out
