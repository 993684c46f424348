import json

import pytest
import torch
from click.testing import CliRunner

from conftest import copy_voc, sample_ids
from otxlite import OtxliteError
from otxlite.cli import cli
from otxlite.data import split_specs
from otxlite.evaluate import evaluate
from otxlite.export import export
from otxlite.predictors import load_predictor
from otxlite.templates import resolve_template
from otxlite.train import train


@pytest.fixture(scope="module", params=["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
def exported(request, tmp_path_factory):
    """A two-stage and a single-stage model trained one iteration, exported to every format.

    Detection-level parity needs a model with confident, distinct scores: a barely trained one returns
    100 near-tied detections, and the detection cap cuts through the ties differently per backend.
    """
    root = tmp_path_factory.mktemp(request.param)
    copy_voc(sample_ids("test", 2), root / "images", root / "images")
    data = root / "data.yaml"
    data.write_text("data:\n  train: {ann-files: images}\n  val: {ann-files: images}\n  test: {ann-files: images}\n")
    template = resolve_template(request.param)
    template["hyper_parameters"]["learning_parameters"].update(batch_size=2, num_workers=0)
    weights = train(template, split_specs(data), root / "run", {"learning_parameters.num_iters": "1"},
                    pretrained=False)
    result = CliRunner().invoke(cli, ["export", "--load-weights", str(weights), "--output", str(root / "export")])
    assert result.exit_code == 0, result.output
    return weights, root / "export", data


def test_export_writes_self_describing_files(exported):
    weights, folder, _ = exported
    for name in ("model.onnx", "openvino.xml", "openvino.bin", "label_schema.json", "config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    checkpoint = torch.load(weights, weights_only=True)
    assert config["precision"] == "FP32" and config["confidence_threshold"] == checkpoint["confidence_threshold"]
    assert config["template_id"] == checkpoint["template"]["id"]
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
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
