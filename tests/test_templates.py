import pytest
import torchvision
from click.testing import CliRunner
from conftest import ROOT

from otxlite.cli import cli
from otxlite.core.errors import OtxliteError
from otxlite.models.templates import apply_overrides, find_templates, parse_params, resolve_template

TORCHVISION_TEMPLATES = {
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
    "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
}


def test_every_torchvision_detector_has_a_template_plus_otxlites_own():
    ids = {t["id"] for t in find_templates("detection")}
    assert ids == TORCHVISION_TEMPLATES | {"custom_fasterrcnn_mobilenet_v2", "fasterrcnn_mobilenet_v3_large_stride16_fpn",
                                           "fasterrcnn_efficientnet_lite0_fpn", "fasterrcnn_efficientnet_lite0_320_fpn"}


@pytest.mark.parametrize("template_id", sorted(TORCHVISION_TEMPLATES))
def test_template_stats_match_torchvision_weight_metadata(template_id):
    template = resolve_template(template_id)
    meta = torchvision.models.get_weight(template["model"]["weights"]).meta
    stats = template["stats"]
    assert stats["params_m"] == pytest.approx(meta["num_params"] / 1e6, abs=0.01)
    assert stats["gflops"] == pytest.approx(meta["_ops"], abs=0.01)
    assert stats["coco_box_ap"] == meta["_metrics"]["COCO-val2017"]["box_map"]
    assert template["model"]["architecture"] == template_id


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "templates").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_benchmarks_candidate_templates_stay_valid_and_build(path):
    """The candidates benchmarks/recipes.py compares with the shipped templates (not listed by find)."""
    from otxlite.models.build import build_model

    template = resolve_template(str(path))
    assert template["id"] == path.stem
    assert template["id"] not in {t["id"] for t in find_templates()}
    model = build_model(template, 90)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(template["stats"]["params_m"], abs=0.01)


def test_find_prints_a_row_per_template_and_filters_by_task():
    result = CliRunner().invoke(cli, ["find", "--task", "detection"])
    assert result.exit_code == 0, result.output
    assert "TASK" in result.output and "GFLOPS" in result.output and "COCO BOX AP" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| detection")]
    assert len(rows) == 12
    assert any("fasterrcnn_mobilenet_v3_large_320_fpn" in r and "| download " in r and "22.8" in r for r in rows)
    assert any("fasterrcnn_efficientnet_lite0_fpn" in r and "| offline " in r for r in rows)  # weights from a package
    assert any("custom_fasterrcnn_mobilenet_v2" in r and "| download " in r for r in rows)


def test_find_unknown_task_lists_the_known_ones():
    with pytest.raises(OtxliteError, match="Known tasks: detection"):
        find_templates("segmentation")


def test_find_searches_extra_template_dirs(tmp_path):
    folder = tmp_path / "mine" / "my_detector"
    folder.mkdir(parents=True)
    template = (ROOT / "templates" / "detection" / "ssd300_vgg16" / "template.yaml").read_text()
    (folder / "template.yaml").write_text(template.replace("id: ssd300_vgg16", "id: my_detector").replace("name: SSD300 VGG16", "name: Mine"))
    result = CliRunner().invoke(cli, ["find", "--template-dir", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert "my_detector" in result.output
    assert resolve_template("my_detector", [tmp_path / "mine"])["name"] == "Mine"


def test_template_by_path_folder_or_id_is_the_same():
    by_id = resolve_template("ssd300_vgg16")
    assert resolve_template(by_id["path"]) == by_id
    assert resolve_template(by_id["path"].rsplit("/", 1)[0]) == by_id


def test_unknown_template_suggests_close_ids():
    with pytest.raises(OtxliteError, match="Did you mean fasterrcnn_resnet50_fpn"):
        resolve_template("fasterrcnn_resnet50")


def test_params_overrides_parse_yaml_values_and_leave_the_original():
    template = resolve_template("ssd300_vgg16")
    overrides = parse_params(["--learning_parameters.batch_size", "4",
                              "--postprocessing.result_based_confidence_threshold=false",
                              "--learning_parameters.lr_steps", "[3, 5]"])
    changed = apply_overrides(template, overrides)
    learning = changed["hyper_parameters"]["learning_parameters"]
    assert learning["batch_size"] == 4 and learning["lr_steps"] == [3, 5]
    assert changed["hyper_parameters"]["postprocessing"]["result_based_confidence_threshold"] is False
    assert template["hyper_parameters"]["learning_parameters"]["batch_size"] == 8


def test_params_set_a_setting_whose_default_is_unset():
    template = resolve_template("ssdlite320_mobilenet_v3_large")
    assert "tile_size" not in template["hyper_parameters"]["tiling"]  # unset: chosen from the objects
    assert apply_overrides(template, {"tiling.tile_size": "320"})["hyper_parameters"]["tiling"]["tile_size"] == 320
    with pytest.raises(OtxliteError, match="Did you mean tiling.tile_size"):
        apply_overrides(template, {"tiling.tile_siz": "320"})


def test_unknown_hyper_parameter_is_an_error_with_a_suggestion():
    template = resolve_template("ssd300_vgg16")
    with pytest.raises(OtxliteError, match="Did you mean learning_parameters.batch_size"):
        apply_overrides(template, {"learning_parameters.batchsize": "4"})
    with pytest.raises(OtxliteError, match="needs a value"):
        parse_params(["--learning_parameters.batch_size"])


def test_broken_template_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text("id: x\nname: [unclosed\n")
    with pytest.raises(OtxliteError, match=r"template.yaml: invalid YAML at line \d"):
        resolve_template(str(path))
