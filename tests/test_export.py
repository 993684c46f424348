import json

import numpy as np
import pytest
import torch
from conftest import SAMPLE, sample_ids
from PIL import Image

from otxlite.core.errors import OtxliteError
from otxlite.data.specs import split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.export.exporter import export
from otxlite.inference.backends import load_predictor, unmatched_detections

MIN_SCORE = 0.2  # below it detections are many and near-tied, and the cap cuts them differently per backend


def bccd_image(size=None):
    """A BCCD test image (640 wide, 480 high) as an RGB array, resized to size (width, height) if given."""
    image = Image.open(SAMPLE / "JPEGImages" / f"{sample_ids('test', 1)[0]}.jpg").convert("RGB")
    return np.asarray(image.resize(size, Image.BILINEAR) if size else image)


@pytest.mark.parametrize("size", [None, (300, 500), (500, 300)], ids=["640x480", "300x500", "500x300"])
def test_every_fp32_backend_gives_the_detections_of_weights_pth_in_the_images_own_pixels(exported, size):
    weights, folder, _ = exported
    image = bccd_image(size)
    reference = load_predictor(weights)([image])[0]
    confident = reference["scores"] >= MIN_SCORE
    assert 0 < confident.sum() < 60, "the fixture model should give a few confident detections"
    height, width = image.shape[:2]
    for model_file in ("model.onnx", "openvino.xml"):
        detections = load_predictor(folder / model_file)([image])[0]
        assert unmatched_detections(reference, detections, MIN_SCORE) == [], model_file
        assert unmatched_detections(detections, reference, MIN_SCORE) == [], model_file
        boxes = detections["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()


def test_eval_gives_the_same_figures_on_every_fp32_backend(exported, tmp_path):
    weights, folder, data = exported
    reference = evaluate(weights, split_specs(data))
    assert reference["map_50"] > 0.2, "the fixture model should have learnt its four images"
    for model_file in ("model.onnx", "openvino.xml"):
        performance = evaluate(folder / model_file, split_specs(data))
        for key in ("map_50", "map_50_95", "f-measure", "confidence_threshold"):
            assert performance[key] == pytest.approx(reference[key], abs=5e-4), (model_file, key)


def test_export_writes_self_describing_files(exported):
    weights, folder, _ = exported
    for name in ("model.onnx", "openvino.xml", "openvino.bin", "label_schema.json", "config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    checkpoint = torch.load(weights, weights_only=True)
    assert config["precision"] == "FP32" and config["confidence_threshold"] == checkpoint["confidence_threshold"]
    assert config["template_id"] == checkpoint["template"]["id"]
    import onnx

    proto = onnx.load(str(folder / "model.onnx"))
    assert "If" not in {node.op_type for node in proto.graph.node}  # NNCF crashes inside If bodies
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["labels"]) == checkpoint["labels"]
    assert float(metadata["confidence_threshold"]) == checkpoint["confidence_threshold"]


def test_eval_runs_on_every_exported_format_with_the_models_schema_and_threshold(exported):
    weights, folder, data = exported
    reference = load_predictor(weights)
    for model_file in ("model.onnx", "openvino.xml"):
        predictor = load_predictor(folder / model_file)
        assert predictor.schema == reference.schema
        assert predictor.confidence_threshold == reference.confidence_threshold
        assert predictor.template == reference.template
        performance = evaluate(folder / model_file, split_specs(data))
        assert 0 <= performance["map_50"] <= 1 and set(performance["per_class"]) == {"RBC", "WBC", "Platelets"}


def test_export_errors_are_clear(exported, tmp_path):
    weights, folder, _ = exported
    torch.save({"not": "otxlite"}, tmp_path / "foreign.pth")
    with pytest.raises(OtxliteError, match="not an otxlite checkpoint"):
        export(tmp_path / "foreign.pth", tmp_path / "out")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "weights.pth").write_bytes(weights.read_bytes())
    with pytest.raises(OtxliteError, match="label_schema.json: missing"):
        export(lone / "weights.pth", tmp_path / "out")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OtxliteError, match="Choose another --output folder"):
        export(weights, blocker / "out")


def test_an_onnx_file_that_otxlite_did_not_write_is_refused(exported, tmp_path):
    import onnx

    _, folder, _ = exported
    proto = onnx.load(str(folder / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "model.onnx"))
    (tmp_path / "label_schema.json").write_text((folder / "label_schema.json").read_text())
    with pytest.raises(OtxliteError, match="not an otxlite export"):
        load_predictor(tmp_path / "model.onnx")


def test_openvino_only_in_fp16_writes_half_size_weights_and_no_onnx(exported, tmp_path):
    weights, folder, _ = exported
    written = export(weights, tmp_path / "fp16", formats=("openvino",), precision="FP16")
    assert written == [tmp_path / "fp16" / "openvino.xml"]
    assert not (tmp_path / "fp16" / "model.onnx").exists()
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["precision"] == "FP16"
    fp32_size = (folder / "openvino.bin").stat().st_size
    assert (tmp_path / "fp16" / "openvino.bin").stat().st_size < 0.6 * fp32_size
    assert load_predictor(tmp_path / "fp16" / "openvino.xml").schema == load_predictor(weights).schema


@pytest.mark.parametrize("exported", ["fasterrcnn_mobilenet_v3_large_320_fpn"], indirect=True)
def test_an_image_without_detections_gives_empty_results_on_every_backend(exported):
    """Faster R-CNN finds nothing on a black image: the graph's path for NMS on no boxes.

    (SSD is no use here: on a uniform image its anchors tie exactly, and NMS may keep any of them.)
    """
    weights, folder, _ = exported
    black = np.zeros((480, 640, 3), np.uint8)
    for model_file in (weights, folder / "model.onnx", folder / "openvino.xml"):
        detections = load_predictor(model_file)([black])[0]
        assert detections["boxes"].shape == (0, 4) and detections["scores"].shape == (0,), model_file
