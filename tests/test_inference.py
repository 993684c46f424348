"""`otxlite predict`, `demo` and `deploy` on models fitted to BCCD images, on every backend."""

import contextlib
import gc
import io
import json
import logging
import os
import subprocess
import sys
import weakref
import zipfile

import cv2
import numpy as np
import pytest
from conftest import spawn
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from otxlite.api import Engine
from otxlite.core.errors import OtxliteError
from otxlite.core.labels import LabelSchema
from otxlite.data.specs import split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.export.deploy import deploy
from otxlite.inference.demo import demo
from otxlite.inference.predict import predict_files
from otxlite.inference.backends import load_predictor

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
