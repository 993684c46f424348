import json
import logging
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from otxlite.cli import cli, main
from otxlite.data.specs import split_specs
from otxlite.engine.train import train
from otxlite.inference.backends import signal_stack_kept
from otxlite.models.backbones import weights_source
from otxlite.models.templates import resolve_template

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "bccd-mini"


def sample_ids(split, count):
    return (SAMPLE / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]


def copy_voc(ids, ann_dir, image_dir):
    """Copy sample images and their XML files into two plain folders."""
    ann_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copy(SAMPLE / "Annotations" / f"{image_id}.xml", ann_dir)
        shutil.copy(SAMPLE / "JPEGImages" / f"{image_id}.jpg", image_dir)


def voc_boxes(xml_path):
    root = ET.parse(xml_path).getroot()
    return [(o.findtext("name"), [float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


@pytest.fixture
def tiny_voc(tmp_path):
    """data.yaml over two train and two val images, as folders of XML files and of images."""
    copy_voc(sample_ids("train", 2), tmp_path / "train" / "xml", tmp_path / "train" / "images")
    copy_voc(sample_ids("val", 2), tmp_path / "val" / "xml", tmp_path / "val" / "images")
    data = tmp_path / "data.yaml"
    data.write_text("data:\n"
                    "  train: {ann-files: train/xml, data-roots: train/images}\n"
                    "  val: {ann-files: val/xml, data-roots: val/images}\n")
    return data


def write_coco(path, images, categories, annotations):
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    return path


@pytest.fixture
def small_template(tmp_path):
    """Write a copy of a template at a small input size, so that tests train fast; returns its path."""
    def make(template_id, min_size=128, max_size=160):
        template = resolve_template(template_id)
        if "min_size" in template["model"]["kwargs"]:
            template["model"]["kwargs"].update(min_size=min_size, max_size=max_size)
        template["hyper_parameters"]["learning_parameters"].update(batch_size=2, num_workers=0)
        del template["path"]
        import yaml

        path = tmp_path / "templates" / template_id / "template.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(template))
        return path
    return make


# Detection-level parity needs a model whose detections are few, confident and distinct: a barely trained one
# returns 100 near-tied detections, and the detection cap cuts through the ties differently per backend.
# So each fixture model is trained to fit a few images (epochs, learning rate, images, batch size).
# Templates whose weights install offline start from them (the path their users take), the others from random.
PARITY_TRAINING = {"fasterrcnn_mobilenet_v3_large_320_fpn": (40, 0.02, 4, 2),
                   "ssdlite320_mobilenet_v3_large": (80, 0.1, 4, 2),
                   "fasterrcnn_efficientnet_lite0_fpn": (20, 0.02, 4, 2)}


@pytest.fixture(scope="session", params=list(PARITY_TRAINING))
def exported(request, tmp_path_factory):
    """Two two-stage models (one pretrained offline) and a single-stage one, each fitted to four BCCD images and
    exported to every format."""
    epochs, learning_rate, images, batch_size = PARITY_TRAINING[request.param]
    root = tmp_path_factory.mktemp(request.param)
    copy_voc(sample_ids("train", images), root / "images", root / "images")
    data = root / "data.yaml"
    data.write_text("data:\n  train: {ann-files: images}\n  val: {ann-files: images}\n  test: {ann-files: images}\n")
    template = resolve_template(request.param)
    template["hyper_parameters"]["learning_parameters"].update(
        batch_size=batch_size, num_workers=0, warmup_iters=2, lr_scheduler="cosine", enable_early_stopping=False)
    weights = train(template, split_specs(data), root / "run", {"learning_parameters.num_iters": str(epochs),
                    "learning_parameters.learning_rate": str(learning_rate), "augmentation": "{}",
                    "anchors.fit": "true", "ema.enable": "false", "learning_parameters.adaptive_repeat": "false"},
                    pretrained=weights_source(template) == "offline")  # fitting four images needs no
    # augmentation nor averaging; anchors are fitted
    result = CliRunner().invoke(cli, ["export", "--load-weights", str(weights), "--output", str(root / "export")])
    assert result.exit_code == 0, result.output
    return weights, root / "export", data


@pytest.fixture
def one_compute_thread():
    """Bit-exact CPU training: with several threads PyTorch's backward through MobileNetV3's squeeze-excitation
    blocks differs in the last bit now and then (measured), and two runs drift apart from the 3rd digit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def otxlite(monkeypatch, capsys):
    """Run the otxlite command in-process as a user would: (exit status, stdout, stderr)."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["otxlite", *map(str, args)])
        logger = logging.getLogger("otxlite")
        handlers = list(logger.handlers)
        logger.handlers = []  # so the CLI adds its console handler on this test's stderr, whatever ran before
        try:
            main()
            status = 0
        except SystemExit as exit:
            status = exit.code
        finally:  # the CLI's console handler writes to this test's captured stderr: do not keep it
            logger.handlers = handlers
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


def spawn(args, timeout, env=None):
    """subprocess.run of args (paths welcome), capturing text output."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def otxlite_subprocess():
    """Run the otxlite command in its own process, as a user does: (exit status, stdout, stderr). A process
    killed by a signal (a native crash) gives the negative signal number; one still running after timeout
    seconds is killed and gives None."""
    def run(*args, timeout=300):
        try:
            result = spawn([sys.executable, "-m", "otxlite", *args], timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"still running after {timeout} s"
        return result.returncode, result.stdout, result.stderr
    return run


@pytest.fixture
def ray_stopped_after():
    """Whatever happens to the test, no Ray process outlives it (a driver killed mid-run leaves Ray's)."""
    yield
    subprocess.run([sys.executable, "-c", "from ray.scripts.scripts import main; main()", "stop", "--force"],
                   capture_output=True, timeout=120)


@pytest.fixture
def voc_copy(tmp_path):
    """Train and val as folders of XML files and images, with their data.yaml."""
    for split, count in (("train", 4), ("val", 2)):
        copy_voc(sample_ids(split, count), tmp_path / split, tmp_path / split)
    data = tmp_path / "data.yaml"
    data.write_text("data:\n  train: {ann-files: train}\n  val: {ann-files: val}\n")
    return data


def quantized_modules(xml_path):
    """The module paths ("/model/backbone/...") of the operations that NNCF's FakeQuantize nodes feed,
    leaving out ShapeOf (the anchor generator reads the shapes of quantized feature maps)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    return {target.get_node().get_friendly_name().rsplit("/", 1)[0] for op in model.get_ops()
            if op.get_type_name() == "FakeQuantize" for target in op.output(0).get_target_inputs()
            if target.get_node().get_type_name() != "ShapeOf"}


def int8_layers(xml_path):
    """The module paths ("/model/backbone/...") of the convolutions and fully connected layers that OpenVINO's CPU
    plugin runs in int8: what quantization buys, whatever names the IR's nodes kept through fusions."""
    import openvino as ov

    with signal_stack_kept():
        runtime = ov.Core().compile_model(str(xml_path), "CPU").get_runtime_model()
    layers = set()
    for op in runtime.get_ops():
        info = op.get_rt_info()
        if (info["layerType"].astype(str) in ("Convolution", "FullyConnected")
                and info["runtimePrecision"].astype(str) in ("u8", "i8")):
            names = info["originalLayersNames"].astype(str).split(",")
            layers.add(next((name.rsplit("/", 1)[0] for name in names if name.startswith("/model/")), names[0]))
    return layers
