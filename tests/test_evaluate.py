import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from otxlite.cli import cli
from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_checkpoint
from otxlite.data.specs import split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.models.templates import resolve_template


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for two epochs on two images, and a data.yaml whose test split is the val images."""
    from conftest import copy_voc, sample_ids

    root = tmp_path_factory.mktemp("trained")
    copy_voc(sample_ids("train", 2), root / "train", root / "train")
    copy_voc(sample_ids("val", 2), root / "val", root / "val")
    data = root / "data.yaml"
    data.write_text("data:\n  train: {ann-files: train}\n  val: {ann-files: val}\n  test: {ann-files: val}\n")
    template = resolve_template("fasterrcnn_mobilenet_v3_large_320_fpn")
    template["hyper_parameters"]["learning_parameters"].update(batch_size=2, num_workers=0)
    weights = train(template, split_specs(data), root / "run", {"learning_parameters.num_iters": "2"},
                    pretrained=False)
    return weights, data


def test_training_stores_the_tuned_threshold_and_validation_figures(trained):
    checkpoint = load_checkpoint(trained[0])
    assert checkpoint["metrics"]["confidence_threshold"] == checkpoint["confidence_threshold"]
    assert {"f-measure", "map_50", "map_50_95", "per_class"} <= set(checkpoint["metrics"])
    log = (trained[0].parent / "logs" / "train.log").read_text()
    assert f"Setting confidence threshold to {checkpoint['confidence_threshold']:g} based on results" in log
    assert "| mAP" in log


def test_eval_cli_prints_the_table_and_writes_performance_and_plots(trained, tmp_path):
    weights, data = trained
    result = CliRunner().invoke(cli, ["eval", "--load-weights", str(weights), "--data", str(data),
                                      "--output", str(tmp_path / "eval"),
                                      "--save-performance", str(tmp_path / "copy.json")])
    assert result.exit_code == 0, result.output
    performance = json.loads((tmp_path / "eval" / "performance.json").read_text())
    assert json.loads((tmp_path / "copy.json").read_text()) == performance
    assert set(performance) == {"f-measure", "confidence_threshold", "map_50", "map_50_95", "per_class"}
    assert set(performance["per_class"]) == {"RBC", "WBC", "Platelets"}
    for name in ("f1_curve.png", "precision_recall.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000
    with Image.open(tmp_path / "eval" / "gallery.jpg") as gallery:  # the 2 test images side by side, 480 px each
        assert gallery.format == "JPEG" and gallery.size == (960, 28 + 360)


def test_fixed_threshold_gives_f1_at_that_threshold(trained, tmp_path):
    weights, data = trained
    tuned = evaluate(weights, split_specs(data))
    fixed = evaluate(weights, split_specs(data), overrides={
        "postprocessing.confidence_threshold": "0.5", "postprocessing.result_based_confidence_threshold": "false"})
    assert fixed["confidence_threshold"] == 0.5
    assert fixed["map_50"] == tuned["map_50"] and fixed["map_50_95"] == tuned["map_50_95"]
    assert fixed["f-measure"] <= tuned["f-measure"]  # the tuned threshold maximises F1 on these results
    stored = evaluate(weights, split_specs(data), overrides={"postprocessing.result_based_confidence_threshold": "false"})
    assert stored["confidence_threshold"] == load_checkpoint(weights)["confidence_threshold"]


def test_eval_needs_the_label_schema_beside_the_model_and_it_must_match(trained, tmp_path):
    weights, data = trained
    lone = tmp_path / "lone" / "weights.pth"
    lone.parent.mkdir()
    shutil.copy(weights, lone)
    with pytest.raises(OtxliteError, match="label_schema.json: missing"):
        evaluate(lone, split_specs(data))
    schema = json.loads((weights.parent / "label_schema.json").read_text())
    schema["labels"].reverse()
    (lone.parent / "label_schema.json").write_text(json.dumps(schema))
    with pytest.raises(OtxliteError, match="do not match the model's"):
        evaluate(lone, split_specs(data))


def test_eval_rejects_unknown_model_files_and_missing_test_split(trained, tmp_path):
    weights, data = trained
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(OtxliteError, match="unknown model file type"):
        evaluate(tmp_path / "model.tflite", split_specs(data))
    specs = split_specs(data)
    del specs["test"]
    with pytest.raises(OtxliteError, match="No test split given"):
        evaluate(weights, specs)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "otxlite", "eval", "--load-weights", str(tmp_path / "none.pth"),
                             "--test-ann-files", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"Error: {tmp_path / 'none.pth'}: file not found."
