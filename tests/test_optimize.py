import json
import shutil

import openvino as ov
import pytest
from click.testing import CliRunner

from conftest import quantized_modules
from otxlite import OtxliteError
from otxlite.cli import cli
from otxlite.data import split_specs
from otxlite.evaluate import evaluate
from otxlite.optimize import QUANTIZED_MODULES, optimize
from otxlite.predictors import load_predictor


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
    written = optimize(weights, split_specs(data), tmp_path / "int8", subset_size=2)
    assert (tmp_path / "int8" / "fp32" / "openvino.xml").is_file() and written == tmp_path / "int8" / "openvino.xml"


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
