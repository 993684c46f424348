import json
import shutil

import numpy as np
import openvino as ov
import pytest
import torch
from click.testing import CliRunner
from conftest import int8_layers, quantized_modules

from otxlite.cli import cli
from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_weights
from otxlite.data.specs import split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.export.optimize import QUANTIZED_MODULES, optimize
from otxlite.inference.backends import load_predictor
from otxlite.models.build import model_from_checkpoint


def test_optimize_writes_an_int8_model_that_eval_reads_with_fp32_and_int8_figures_side_by_side(exported, tmp_path):
    _, folder, data = exported
    result = CliRunner().invoke(cli, ["optimize", "--load-weights", str(folder / "openvino.xml"), "--data", str(data),
                                      "--output", str(tmp_path / "int8"), "--subset-size", "4"])
    assert result.exit_code == 0, result.output
    for name in ("openvino.xml", "openvino.bin", "label_schema.json", "config.json", "performance.json"):
        assert (tmp_path / "int8" / name).is_file(), name
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["precision"] == "INT8"
    modules = quantized_modules(tmp_path / "int8" / "openvino.xml")
    assert any(module.startswith("/model/backbone/") for module in modules)
    assert all(module.startswith(tuple(f"/model/{m}" for m in QUANTIZED_MODULES)) for module in modules), modules
    performance = json.loads((tmp_path / "int8" / "performance.json").read_text())
    fp32, int8 = performance["comparison"]["fp32"], performance["comparison"]["int8"]
    assert fp32["map_50"] == pytest.approx(evaluate(folder / "openvino.xml", split_specs(data))["map_50"], abs=1e-9)
    int8_eval = evaluate(tmp_path / "int8" / "openvino.xml", split_specs(data))
    assert int8["map_50"] == pytest.approx(int8_eval["map_50"], abs=1e-9) == pytest.approx(performance["map_50"])
    assert performance["map_50_drop"] == pytest.approx(fp32["map_50"] - int8["map_50"])
    assert fp32["latency_ms"] > 0 and int8["latency_ms"] > 0
    assert load_predictor(tmp_path / "int8" / "openvino.xml").schema == load_predictor(folder / "openvino.xml").schema
    with pytest.raises(OtxliteError, match="already INT8"):
        optimize(tmp_path / "int8" / "openvino.xml", split_specs(data), tmp_path / "again")


@pytest.mark.parametrize("exported", ["ssdlite320_mobilenet_v3_large"], indirect=True)
def test_optimize_from_weights_pth_exports_first(exported, tmp_path):
    weights, _, data = exported
    written = optimize(weights, split_specs(data), tmp_path / "int8", subset_size=2, method="ptq")
    assert (tmp_path / "int8" / "fp32" / "openvino.xml").is_file() and written == tmp_path / "int8" / "openvino.xml"
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["quantization"]["method"] == "ptq"


@pytest.mark.parametrize("exported", ["ssdlite320_mobilenet_v3_large"], indirect=True)
def test_accuracy_control_reports_whether_the_bound_was_met(exported, tmp_path):
    _, folder, data = exported
    optimize(folder / "openvino.xml", split_specs(data), tmp_path / "int8", subset_size=4, max_accuracy_drop=0.0)
    performance = json.loads((tmp_path / "int8" / "performance.json").read_text())
    assert performance["max_accuracy_drop"] == 0.0
    assert performance["max_accuracy_drop_met"] == (performance["map_50_drop"] <= 0.0)


@pytest.mark.parametrize("exported", ["ssdlite320_mobilenet_v3_large"], indirect=True)
def test_optimize_errors_are_clear(exported, tmp_path):
    _, folder, data = exported
    with pytest.raises(OtxliteError, match="has only 4 images. Pass --subset-size 4 or less"):
        optimize(folder / "openvino.xml", split_specs(data), tmp_path / "a", subset_size=5)
    with pytest.raises(OtxliteError, match="optimize takes an openvino.xml"):
        optimize(folder / "model.onnx", split_specs(data), tmp_path / "b")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    image = ov.opset13.parameter([1, 3, -1, -1], ov.Type.f32, name="image")
    ov.save_model(ov.Model([ov.opset13.relu(image)], [image]), str(foreign / "openvino.xml"))
    shutil.copy(folder / "label_schema.json", foreign)
    with pytest.raises(OtxliteError, match="not an otxlite export"):
        optimize(foreign / "openvino.xml", split_specs(data), tmp_path / "c")


def quantized_parts(xml_path):
    """The detector's parts ('backbone/body', 'rpn/head', 'roi_heads/box_head', ...) with layers that run in int8.
    (Not the IR's FakeQuantize nodes: in the QAT IR, OpenVINO's BatchNorm fusion renames convolutions.)"""
    return {"/".join(layer.split("/")[2:4]) for layer in int8_layers(xml_path) if layer.startswith("/model/")}


@pytest.fixture
def qat_run(exported, otxlite, tmp_path):
    """The OTX walkthrough's command with otxlite's names, on the fixture's weights.pth: (exported, output)."""
    weights, _, data = exported
    status, _, err = otxlite("optimize", "--load-weights", weights, "--data", data, "--output", tmp_path / "qat",
                             "--subset-size", 4, "params", "--qat.epochs", 1)
    assert status == 0, err
    return exported, tmp_path / "qat"


def test_qat_on_weights_pth_writes_an_int8_ir_with_the_quantized_parts_of_ptq(qat_run, tmp_path):
    (weights, folder, data), output = qat_run
    for name in ("openvino.xml", "openvino.bin", "label_schema.json", "config.json", "performance.json",
                 "weights_int8.pth", "checkpoints/last.pth"):
        assert (output / name).is_file(), name
    config = json.loads((output / "config.json").read_text())
    assert config["precision"] == "INT8" and config["quantization"]["method"] == "qat"
    assert config["quantization"]["max_accuracy_drop"] == 0.01 and config["quantization"]["epochs"] <= 1
    checkpoint = torch.load(output / "weights_int8.pth", weights_only=True)
    assert checkpoint["confidence_threshold"] == config["confidence_threshold"]
    performance = json.loads((output / "performance.json").read_text())
    assert performance["map_50"] == pytest.approx(evaluate(output / "openvino.xml", split_specs(data))["map_50"])
    ptq = optimize(folder / "openvino.xml", split_specs(data), tmp_path / "ptq", subset_size=4)
    assert quantized_parts(output / "openvino.xml") == quantized_parts(ptq)  # the same modules in INT8
    with pytest.raises(OtxliteError, match="already INT8"):
        optimize(output / "openvino.xml", split_specs(data), tmp_path / "again")
    with pytest.raises(OtxliteError, match="already quantized"):
        optimize(output / "weights_int8.pth", split_specs(data), tmp_path / "again")


def first_convolution_int8_weights(xml_path):
    """The int8 weights of the IR's first convolution (the backbone's stem), as OpenVINO stores them."""
    model = ov.Core().read_model(xml_path)
    stem = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"
                and "/backbone/body/body.0/" in op.input_value(0).get_node().get_friendly_name())
    node = stem.input_value(1).get_node()
    while node.get_type_name() != "Constant":  # int8 Constant -> Convert -> Multiply (scale) -> Convolution
        node = node.input_value(0).get_node()
    return node.get_data()


@pytest.mark.parametrize("exported", ["fasterrcnn_mobilenet_v3_large_320_fpn"], indirect=True)
def test_qat_ir_holds_the_int8_weights_of_its_pytorch_model(qat_run):
    """The overflow fix puts each channel's largest weight at a rounding tie that PyTorch and OpenVINO resolved
    differently (quantization.widen_weight_ranges); the IR must hold the weights QAT trained."""
    _, output = qat_run
    model = model_from_checkpoint(load_weights(output / "weights_int8.pth"), output / "weights_int8.pth")
    quantizer = dict(model.named_modules())["__nncf_hooks.pre_hooks.backbone/body/0/0/conv2d/0__1.0"]
    with torch.no_grad():
        levels = torch.round(quantizer(model.backbone.body["0"][0].weight) / quantizer.scale * quantizer.level_high)
    assert levels.abs().max() <= 63  # 7-bit weights (quantization.py)
    assert np.array_equal(first_convolution_int8_weights(output / "openvino.xml"), levels.numpy().astype(np.int8))


@pytest.mark.parametrize("exported", ["fasterrcnn_mobilenet_v3_large_320_fpn"], indirect=True)
def test_qat_trains_while_over_budget_keeps_its_best_epoch_and_resumes(exported, tmp_path, caplog):
    weights, _, data = exported
    specs = split_specs(data)
    # a budget no model meets: every allowed epoch trains
    optimize(weights, specs, tmp_path / "qat", subset_size=2, max_accuracy_drop=-1.0,
             overrides={"qat.epochs": "1"})
    history = json.loads((tmp_path / "qat" / "config.json").read_text())["quantization"]["history"]
    assert [row["epoch"] for row in history] == [0, 1] and history[1]["loss"] > 0
    assert "smallest val mAP@0.5 drop" in caplog.text
    best = min(history, key=lambda row: row["drop"])
    assert torch.load(tmp_path / "qat" / "weights_int8.pth", weights_only=True)["epoch"] == best["epoch"]
    torch.manual_seed(12345)  # whatever ran before in the process, the same QAT run repeats
    optimize(weights, specs, tmp_path / "again", subset_size=2, max_accuracy_drop=-1.0, overrides={"qat.epochs": "1"})
    assert json.loads((tmp_path / "again" / "config.json").read_text())["quantization"]["history"] == history

    optimize(weights, specs, tmp_path / "qat", max_accuracy_drop=-1.0, overrides={"qat.epochs": "2"}, resume=True)
    resumed = json.loads((tmp_path / "qat" / "config.json").read_text())["quantization"]["history"]
    assert [row["epoch"] for row in resumed] == [0, 1, 2]
    assert resumed[:2] == history  # continued from epoch 1, not started again


@pytest.mark.parametrize("exported", ["ssdlite320_mobilenet_v3_large"], indirect=True)
def test_qat_errors_are_clear(exported, otxlite, tmp_path):
    weights, folder, data = exported
    specs = split_specs(data)
    with pytest.raises(OtxliteError, match="trains the PyTorch model. Pass the weights.pth"):
        optimize(folder / "openvino.xml", specs, tmp_path / "a", method="qat")
    with pytest.raises(OtxliteError, match="batches of 2 images or more"):
        optimize(weights, specs, tmp_path / "b", overrides={"learning_parameters.batch_size": "1"})
    with pytest.raises(OtxliteError, match="--resume and params belong to quantization-aware training"):
        optimize(folder / "openvino.xml", specs, tmp_path / "c", resume=True)
    status, _, err = otxlite("optimize", "--load-weights", weights, "--data", data, "--output", tmp_path / "d",
                             "params", "--qat.epoch", "3")
    assert status == 2 and "Unknown hyper-parameter 'qat.epoch'. Did you mean qat.epochs" in err
