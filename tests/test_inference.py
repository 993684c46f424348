"""`otxlite predict`, `demo` and `deploy` on models fitted to BCCD images, on every backend."""

import contextlib
import gc
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import spawn
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from otxlite.api import Engine
from otxlite.core.errors import OtxliteError
from otxlite.core.files import read_json
from otxlite.core.labels import LabelSchema
from otxlite.data.records import load_splits
from otxlite.data.specs import read_data_yaml, split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.export.deploy import deploy
from otxlite.inference.backends import load_predictor
from otxlite.inference.demo import demo
from otxlite.inference.predict import predict_files
from otxlite.inference.select import MIN_SCORE, binary_entropy

MODEL_FILES = ("run/weights.pth", "export/model.onnx", "export/openvino.xml")
FASTER_RCNN = pytest.mark.parametrize("exported", ["fasterrcnn_mobilenet_v3_large_320_fpn"], indirect=True)


def model_file(exported, name):
    weights, export_folder, _ = exported
    return weights if name == "run/weights.pth" else export_folder / name.split("/")[1]


def images_of(data):
    return data.parent / "images"


def coco_ground_truth(folder, schema):
    """The VOC boxes of the folder's images as a COCO object, image ids numbering the sorted files from 1."""
    from otxlite.data.records import load_split
    from otxlite.data.specs import SplitSpec
    split = load_split(SplitSpec("test", folder))
    ids = {label["name"]: label["id"] for label in schema["labels"]}
    samples = sorted(split.samples, key=lambda s: s.image.name)
    annotations = [{"id": len(samples) * 1000 + i * 100 + j, "image_id": i + 1, "category_id": ids[c], "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                   for i, s in enumerate(samples) for j, (c, (x1, y1, x2, y2)) in enumerate(zip(s.classes, s.boxes))]
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1, "file_name": s.image.name, "width": s.width, "height": s.height}
                               for i, s in enumerate(samples)], "annotations": annotations,
                    "categories": [{"id": label["id"], "name": label["name"]} for label in schema["labels"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.mark.parametrize("name", MODEL_FILES)
def test_predict_writes_coco_results_whose_map_is_eval_s(exported, name, tmp_path):
    path = model_file(exported, name)
    output = predict_files(path, images_of(exported[2]), tmp_path / "predictions.json", threshold=0.0)
    records = json.loads(output.read_text())
    predictor = load_predictor(path)
    names = LabelSchema.of(predictor.schema).name_of
    assert records and all(r["category_name"] == names[r["category_id"]] for r in records)
    assert {r["file_name"] for r in records} <= {p.name for p in images_of(exported[2]).glob("*.jpg")}
    ground_truth = coco_ground_truth(images_of(exported[2]), predictor.schema)
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground_truth.loadRes(str(output))
        evaluation = COCOeval(ground_truth, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    performance = evaluate(path, split_specs(exported[2]))
    assert evaluation.stats[1] == pytest.approx(performance["map_50"], abs=1e-3)  # boxes rounded to 0.01 px


@FASTER_RCNN
def test_predict_csv_keeps_detections_above_the_model_threshold_and_skips_broken_images(exported, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(images_of(exported[2]).glob("*.jpg"))[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    xml = exported[1] / "openvino.xml"
    with caplog.at_level(logging.WARNING, logger="otxlite"):
        output = predict_files(xml, folder, tmp_path / "predictions.csv")
    assert any(f"{folder / 'broken.jpg'}: unreadable image" in r.getMessage() for r in caplog.records)
    assert any("Skipped 1 unreadable image(s) of 3." in r.getMessage() for r in caplog.records)
    lines = output.read_text().splitlines()
    assert lines[0] == "file_name,category_id,category_name,score,xmin,ymin,xmax,ymax"
    predictor = load_predictor(xml)
    expected = sum(int((d["scores"] > predictor.confidence_threshold).sum()) for d in
                   predictor([np.array(Image.open(p).convert("RGB")) for p in sorted(folder.glob("B*.jpg"))]))
    assert len(lines) - 1 == expected > 0
    assert all(float(line.split(",")[3]) > predictor.confidence_threshold for line in lines[1:])


def test_predict_and_demo_errors_name_the_input(exported, tmp_path):
    xml = exported[1] / "openvino.xml"
    (tmp_path / "empty").mkdir()
    with pytest.raises(OtxliteError, match="no images"):
        predict_files(xml, tmp_path / "empty", tmp_path / "p.json")
    with pytest.raises(OtxliteError, match="not found"):
        predict_files(xml, tmp_path / "missing", tmp_path / "p.json")
    (tmp_path / "notes.txt").write_text("x.jpg\n")  # a .txt file lists images
    with pytest.raises(OtxliteError, match="none of the 1 files it lists exists"):
        predict_files(xml, tmp_path / "notes.txt", tmp_path / "p.json")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(OtxliteError, match="not an image file"):
        predict_files(xml, tmp_path / "notes.md", tmp_path / "p.json")
    with pytest.raises(OtxliteError, match="not an image file"):
        demo(xml, tmp_path / "notes.md", tmp_path / "out")
    (tmp_path / "clip.mp4").write_text("not a video")
    with pytest.raises(OtxliteError, match="cannot open the video"):
        demo(xml, tmp_path / "clip.mp4", tmp_path / "out")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_demo_draws_boxes_in_label_colours_and_never_over_its_input(exported, name, tmp_path):
    path = model_file(exported, name)
    folder = images_of(exported[2])
    output = Engine().demo(folder, model=path)
    assert output == path.parent / "demo"
    predictor = load_predictor(path)
    colours = {tuple(int(label["color"][i:i + 2], 16) for i in (1, 3, 5)) for label in predictor.schema["labels"]}
    for image in sorted(folder.glob("*.jpg")):
        drawn = np.array(Image.open(output / image.name).convert("RGB")).astype(int)
        original = np.array(Image.open(image).convert("RGB")).astype(int)
        assert drawn.shape == original.shape
        changed = np.abs(drawn - original).sum(axis=2) > 60
        assert changed.mean() > 0.005  # boxes and captions were drawn
        near_a_label_colour = [np.abs(drawn[changed] - c).sum(axis=1) < 60 for c in colours]
        assert np.any(near_a_label_colour, axis=0).mean() > 0.2  # the rest: caption text and its anti-aliasing
    with pytest.raises(OtxliteError, match="never writes over its input"):
        Engine().demo(folder, model=path, output=folder)


@FASTER_RCNN
def test_demo_video_writes_every_frame_annotated(exported, tmp_path):
    frames = [cv2.imread(str(p)) for p in sorted(images_of(exported[2]).glob("*.jpg"))[:3]]
    writer = cv2.VideoWriter(str(tmp_path / "cells.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4, (640, 480))
    for frame in frames:
        writer.write(frame)
    writer.release()
    output = demo(exported[1] / "openvino.xml", tmp_path / "cells.mp4", tmp_path / "out")
    capture = cv2.VideoCapture(str(output / "cells.mp4"))
    read = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read.append(frame)
    assert len(read) == 3 and read[0].shape == (480, 640, 3)
    assert capture.get(cv2.CAP_PROP_FPS) == 4
    assert np.abs(read[0].astype(int) - frames[0]).mean() > 1  # annotated, not a copy
    assert not list((tmp_path / "out").glob(".*"))  # no partial file left


@FASTER_RCNN
def test_deploy_package_runs_in_a_fresh_venv_with_only_its_three_dependencies(exported, tmp_path):
    xml = exported[1] / "openvino.xml"
    package = deploy(xml, tmp_path / "cells.zip")
    with zipfile.ZipFile(package) as archive:
        assert sorted(archive.namelist()) == ["README.md", "model/config.json", "model/label_schema.json",
                                              "model/openvino.bin", "model/openvino.xml", "requirements-serve.txt",
                                              "requirements.txt", "run.py", "serve.py", "serve_page.html"]
        archive.extractall(tmp_path / "unzipped")
    requirements = (tmp_path / "unzipped" / "requirements.txt").read_text().split()
    assert [r.split("==")[0] for r in requirements] == ["openvino", "numpy", "pillow"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    environment = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PYTHONPATH")}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
                   cwd=tmp_path / "unzipped", check=True, env=environment)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                               capture_output=True, text=True, check=True, env=environment).stdout
    assert {p["name"].lower() for p in json.loads(installed)} <= {"openvino", "openvino-telemetry", "numpy",
                                                                   "pillow", "pip", "setuptools", "packaging"}
    images = images_of(exported[2])
    run = subprocess.run([str(venv / "bin" / "python"), "-I", "run.py", str(images), "--json", "runner.json"],
                         cwd=tmp_path / "unzipped", capture_output=True, text=True, env=environment)
    assert run.returncode == 0, run.stderr
    assert f"{sorted(images.glob('*.jpg'))[0]}: " in run.stdout
    predicted = predict_files(xml, images, tmp_path / "predictions.json")
    assert json.loads((tmp_path / "unzipped" / "runner.json").read_text()) == json.loads(predicted.read_text())


def test_deploy_needs_an_exported_ir_with_its_files(exported, tmp_path):
    with pytest.raises(OtxliteError, match="deploy packages an OpenVINO IR"):
        deploy(exported[0], tmp_path / "p.zip")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("openvino.xml", "openvino.bin", "label_schema.json"):
        (copy / name).write_bytes((exported[1] / name).read_bytes())
    with pytest.raises(OtxliteError, match="config.json: missing beside openvino.xml"):
        deploy(copy / "openvino.xml", tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists()


RELEASE_OUT_OF_ORDER_THEN_CTRL_C = """
import gc, os, signal, sys
import numpy as np
from otxlite.inference.backends import load_predictor
signal.signal(signal.SIGINT, signal.default_int_handler)  # a job started with & inherits SIGINT ignored
image = np.zeros((48, 64, 3), np.uint8)
first, second = load_predictor(sys.argv[1]), load_predictor(sys.argv[1])
first([image]), second([image])
del first; gc.collect()
del second; gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_ctrl_c_after_two_openvino_models_is_a_keyboard_interrupt_not_a_crash(exported):
    """OpenVINO's CPU plugin left the thread on an unmapped signal stack when models went in another order than
    they came: the next signal (Ctrl-C, a child process ending) was a SIGSEGV."""
    result = spawn([sys.executable, "-c", RELEASE_OUT_OF_ORDER_THEN_CTRL_C, exported[1] / "openvino.xml"], 300)
    assert (result.returncode, result.stdout.strip()) == (0, "KeyboardInterrupt"), result.stderr


def test_a_throughput_predictor_is_freed_once_dropped(exported):
    """Its request queue's callback once referred to it, where the garbage collector could not see: every
    evaluation kept a compiled model in memory for good."""
    predictor = load_predictor(exported[1] / "openvino.xml", throughput=True)
    assert len(predictor([np.zeros((48, 64, 3), np.uint8)] * 3)) == 3
    dropped = weakref.ref(predictor)
    del predictor
    gc.collect()
    assert dropped() is None


def test_deploy_pins_what_is_installed_and_names_what_is_not():
    from otxlite.export.deploy import pinned

    assert pinned("numpy") == f"numpy=={np.__version__}"
    assert pinned("a-package-nobody-installed") == "a-package-nobody-installed"


def assert_same_boxes(found, expected, tolerance):
    """found and expected hold the same (file name, class, [x, y, w, h]), the boxes within tolerance px."""
    assert len(found) == len(expected)
    left = list(found)
    for name, label, box in expected:
        match = next((f for f in left if f[:2] == (name, label) and
                      all(abs(a - b) <= tolerance for a, b in zip(f[2], box))), None)
        assert match is not None, (name, label, box)
        left.remove(match)


@FASTER_RCNN
def test_pre_annotations_in_every_format_read_back_as_the_same_boxes_and_train(exported, tmp_path, otxlite):
    weights, _, data = exported
    images = images_of(data)
    predicted = json.loads(predict_files(weights, images, tmp_path / "results.json").read_text())
    expected = [(r["file_name"], r["category_name"], r["bbox"]) for r in predicted]
    assert expected
    for fmt in ("coco", "voc", "yolo", "labelme", "cvat"):
        output = tmp_path / fmt
        status, _, err = otxlite("predict", "--load-weights", weights, "--input", images, "--output", output,
                                 "--format", fmt)
        assert status == 0, err
        status, report, _ = otxlite("data", "check", "--data", output / "data.yaml")
        assert status == 0, report
        split = load_splits(read_data_yaml(output / "data.yaml"), task=None)[0]["train"]
        read_back = [(s.image.name, c, [x1, y1, x2 - x1, y2 - y1])
                     for s in split.samples for c, (x1, y1, x2, y2) in zip(s.classes, s.boxes)]
        assert_same_boxes(read_back, expected, 0.02)
        assert len(split.samples) == len(list(images.glob("*.jpg")))  # images without detections too
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in (data.parent / "images").iterdir())
    # a list whose paths climb out of its folder: every file lands inside --output, and only the listed images
    (tmp_path / "lists").mkdir()
    listed = sorted(images.glob("*.jpg"))[:2]
    (tmp_path / "lists" / "two.txt").write_text("".join(f"{os.path.relpath(p, tmp_path / 'lists')}\n" for p in listed))
    before = {p for p in tmp_path.rglob("*")}
    for fmt in ("yolo", "voc", "labelme"):
        status, _, err = otxlite("predict", "--load-weights", weights, "--input", tmp_path / "lists" / "two.txt",
                                 "--output", tmp_path / f"two-{fmt}", "--format", fmt)
        assert status == 0, err
        assert all(p.is_relative_to(tmp_path / f"two-{fmt}") for p in set(tmp_path.rglob("*")) - before), fmt
        before = {p for p in tmp_path.rglob("*")}
        split = load_splits(read_data_yaml(tmp_path / f"two-{fmt}" / "data.yaml"), task=None)[0]["train"]
        assert sorted(s.image.name for s in split.samples) == [p.name for p in listed], fmt

    status, _, err = otxlite("predict", "--load-weights", weights, "--input", images, "--output", tmp_path / "voc",
                             "--format", "voc")
    assert status == 2 and "give a new or empty --output folder" in err
    # the round trip a labeller takes: pre-annotations -> convert -> train, growing the same model
    status, _, err = otxlite("data", "convert", "--data", tmp_path / "cvat" / "data.yaml", "--output",
                             tmp_path / "converted")
    assert status == 0, err
    status, _, err = otxlite("train", "--data", tmp_path / "converted" / "data.yaml", "--val-data-roots", images,
                             "--val-ann-files", images, "--load-weights", weights, "--output", tmp_path / "retrained",
                             "params", "--learning_parameters.num_iters", "1")
    assert status == 0, err
    assert read_json(tmp_path / "retrained" / "label_schema.json")["labels"] == LabelSchema.read(weights)["labels"]


@FASTER_RCNN
def test_select_ranks_by_uncertainty_leaves_near_duplicates_for_later_and_writes_a_list_predict_reads(
        exported, tmp_path, otxlite, caplog):
    weights, _, data = exported
    pool = tmp_path / "unlabelled folder"
    shutil.copytree(images_of(data), pool, ignore=shutil.ignore_patterns("*.xml"))
    predicted = json.loads(predict_files(weights, pool, tmp_path / "all.json", threshold=MIN_SCORE).read_text())
    entropy = {p.name: 0.0 for p in pool.glob("*.jpg")}
    for record in predicted:
        entropy[record["file_name"]] += binary_entropy(record["score"])
    by_score = sorted(entropy, key=lambda name: -entropy[name])
    with Image.open(pool / by_score[0]) as top:  # a near-duplicate of the most uncertain image: shifted, re-saved
        top.crop((3, 2, top.width, top.height)).resize(top.size).save(pool / "zz_again.jpg", quality=80)
    (pool / "broken.jpg").write_bytes(b"not a jpeg")

    status, out, err = otxlite("select", "--load-weights", weights, "--input", pool, "--budget", "2", "--output",
                               tmp_path / "picks.txt")
    assert status == 0, err
    picks = (tmp_path / "picks.txt").read_text().splitlines()
    assert [Path(line).name for line in picks] == by_score[:2]
    assert all((tmp_path / line).is_file() for line in picks)  # relative to the list's folder
    assert "broken.jpg: unreadable image" in err and "Skipped 1 unreadable image(s) of 6" in err

    with caplog.at_level(logging.WARNING, logger="otxlite"):
        picked = Engine().select(pool, 10, tmp_path / "all.txt", weights)
    assert "--budget 10 is more than the 6 images" in caplog.text
    assert [path.name for path, _ in picked] == by_score + ["zz_again.jpg"]  # the duplicate waits for the others
    assert [score for _, score in picked][:4] == pytest.approx([entropy[name] for name in by_score], abs=1e-4)
    # the picks are a list of images the next stages read
    assert predict_files(weights, tmp_path / "picks.txt", tmp_path / "picked.json").exists()

    status, _, err = otxlite("select", "--load-weights", weights, "--input", tmp_path / "empty", "--budget", "2")
    assert status == 2 and "empty: not found" in err
    (tmp_path / "empty").mkdir()
    status, _, err = otxlite("select", "--load-weights", weights, "--input", tmp_path / "empty", "--budget", "2")
    assert status == 2 and "empty: no images" in err
    status, _, err = otxlite("select", "--load-weights", weights, "--input", pool, "--budget", "2", "--output",
                             pool / "picks.txt")
    assert status == 2 and "never writes over its inputs" in err
