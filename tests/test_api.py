"""The Python API: the whole chain through it alone, loaded models on every kind of input, auto-configuration, the
examples (script and notebook), each command's --help examples, and the docs site."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import ROOT, SAMPLE, copy_voc, sample_ids, spawn, write_coco
from PIL import Image

import otxlite as otx
from otxlite.cli import EXAMPLES
from otxlite.core.errors import ArgumentError, DataError, ModelFileError, OtxliteError, TemplateError
from otxlite.data.specs import split_specs
from otxlite.models.autoconfig import DETECTION_TEMPLATE, SEGMENTATION_TEMPLATE, choose_template

TINY_RECIPE = {"learning_parameters.num_iters": 1, "learning_parameters.batch_size": 2}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Train (SSDlite, 1 epoch, the template's default DataLoader workers), evaluate, export and optimize four
    BCCD images through the API alone; returns (engine, {stage: result}, data folder)."""
    root = tmp_path_factory.mktemp("api")
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        copy_voc(sample_ids(split, count), root / split, root / split)
    (root / "data.yaml").write_text("data:\n" + "".join(f"  {s}: {{ann-files: {s}}}\n" for s in ("train", "val", "test")))
    engine = otx.Engine(data=root / "data.yaml", work_dir=root / "run")
    results = {"train": engine.train("ssdlite320_mobilenet_v3_large", pretrained=False, params=TINY_RECIPE)}
    results["evaluate"] = engine.evaluate()
    results["export"] = engine.export()
    results["optimize"] = engine.optimize(subset_size=2)
    return engine, results, root


def test_the_chain_through_the_api_writes_each_stage_and_returns_typed_results(chain):
    engine, results, root = chain
    run = results["train"]
    assert run.model == root / "run" / "weights.pth" and run.model.is_file()
    assert run.figures["epoch"] == 1 and 0 <= run.figures["val_map_50"] <= 1
    assert run.files["label_schema.json"].is_file() and run.files["logs/metrics.csv"].is_file()

    evaluation = results["evaluate"]
    on_disk = json.loads((root / "run" / "eval" / "performance.json").read_text())
    assert isinstance(evaluation, otx.Evaluation) and evaluation.model == run.model
    assert (evaluation.map_50, evaluation.f1, evaluation.per_class) == (on_disk["map_50"], on_disk["f-measure"],
                                                                        on_disk["per_class"])
    assert evaluation.per_class and set(evaluation.per_class) <= {"RBC", "WBC", "Platelets"}
    assert evaluation.mask_map_50 is None  # detection

    exported = results["export"]
    assert exported.model == root / "run" / "export" / "openvino.xml"
    assert {"model.onnx", "openvino.xml", "label_schema.json", "config.json"} <= set(exported.files)
    optimized = results["optimize"]
    assert optimized.model == root / "run" / "optimize" / "openvino.xml" and optimized.model.is_file()
    assert set(optimized.figures["comparison"]) == {"fp32", "int8"}
    assert engine.model == optimized.model  # the next stage takes the last model written


def test_a_loaded_model_gives_the_same_detections_for_a_path_a_pil_image_an_array_and_a_folder(chain, tmp_path):
    engine, results, root = chain
    image_path = sorted((root / "test").glob("*.jpg"))[0]
    model = otx.load(results["export"].model)
    assert model.task == "detection" and sorted(model.names) == ["Platelets", "RBC", "WBC"]
    from_path = model.predict(image_path, threshold=0.0)
    from_pil = model.predict(Image.open(image_path), threshold=0.0)
    from_array = model.predict(np.asarray(Image.open(image_path).convert("RGB")), threshold=0.0)
    from_folder = model.predict(root / "test", threshold=0.0)
    from_list = model.predict([image_path, np.asarray(Image.open(image_path).convert("RGB"))], threshold=0.0)
    assert len(from_path) > 0 and len(from_folder) == 2 and len(from_list) == 2
    for other in (from_pil, from_array, from_folder[0], *from_list):
        np.testing.assert_array_equal(other.boxes, from_path.boxes)
        np.testing.assert_array_equal(other.scores, from_path.scores)
        assert other.names == from_path.names
    assert from_path.image_size == (480, 640) and from_path.masks is None
    assert all(score > model.confidence_threshold for score in model.predict(image_path).scores)

    picture = from_path.plot()
    assert picture.size == (640, 480)
    assert np.asarray(picture).tolist() != np.asarray(Image.open(image_path).convert("RGB")).tolist()

    # to_coco() is what `otxlite predict` writes, record for record
    written = engine.predict_to_file(image_path, tmp_path / "predictions.json", model=results["export"].model,
                                     threshold=0.0)
    assert from_path.to_coco(image_id=1, file_name=image_path.name) == json.loads(written.read_text())


@pytest.mark.parametrize("model_file", ["weights.pth", "export/model.onnx", "optimize/openvino.xml"])
def test_every_backend_takes_every_kind_of_input(chain, model_file):
    _, _, root = chain
    image_path = sorted((root / "test").glob("*.jpg"))[0]
    model = otx.load(root / "run" / model_file)
    array = np.asarray(Image.open(image_path).convert("RGB"))
    grey = np.asarray(Image.open(image_path).convert("L"))
    found = model.predict([image_path, array, Image.open(image_path), grey], threshold=0.0)
    assert [len(d) for d in found[:3]] == [len(found[0])] * 3 and len(found[0]) > 0
    for other in found[1:3]:  # PyTorch runs same-size images as one batch: float rounding differs by < 1e-3 px
        np.testing.assert_allclose(other.boxes, found[0].boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(other.scores, found[0].scores, rtol=0, atol=1e-5)
    assert found[3].image_size == (480, 640) and found[3].plot().size == (640, 480)


def test_api_errors_are_otxlite_errors_with_the_cli_messages(chain, tmp_path, otxlite):
    _, results, root = chain
    missing = tmp_path / "openvino.xml"
    with pytest.raises(ModelFileError, match="file not found") as raised:
        otx.load(missing)
    status, _, err = otxlite("eval", "--load-weights", missing, "--data", root / "data.yaml")
    assert status == 2 and err.strip() == f"Error: {raised.value}"
    with pytest.raises(TemplateError, match="No template file or id 'no_such_template'"):
        engine_on(root).train("no_such_template")
    with pytest.raises(ArgumentError, match="No model yet"):
        engine_on(root).evaluate()
    with pytest.raises(ArgumentError, match="HxWx3"):
        otx.load(results["export"].model).predict(np.zeros((4, 4, 3), np.float32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        otx.load(results["export"].model).predict(broken)
    assert all(issubclass(e, OtxliteError) for e in (ModelFileError, TemplateError, ArgumentError, DataError))


def engine_on(root):
    return otx.Engine(data=root / "data.yaml", work_dir=root / "other")


# ---------------------------------------------------------------- auto-configuration


def large_object_data(folder, box=(60, 50, 120, 100)):
    """Two 320x240 images, each with one box (x, y, width, height): 120x100, objects large at any template's
    input."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 320, 3), np.uint8)).save(folder / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 320, "height": 240})
    write_coco(folder / "train.json", images, [{"id": 1, "name": "part"}],
               [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(box), "area": box[2] * box[3],
                 "iscrowd": 0} for i in range(2)])
    (folder / "data.yaml").write_text("data:\n  train: {ann-files: train.json, data-roots: .}\n"
                                      "  val: {ann-files: train.json, data-roots: .}\n")
    return folder / "data.yaml"


def test_auto_configuration_picks_the_task_from_the_annotations_and_the_model_from_object_sizes(tmp_path):
    bccd, why = choose_template(split_specs(SAMPLE / "data.yaml"))
    assert bccd["id"] == DETECTION_TEMPLATE and "fine-tunes ImageNet weights offline; Platelets' median" in why
    large, why = choose_template(split_specs(large_object_data(tmp_path / "large")))
    assert large["id"] == DETECTION_TEMPLATE and "at least 32 px, so the whole image is read" in why
    small, why = choose_template(split_specs(large_object_data(tmp_path / "small", box=(60, 50, 12, 10))))
    assert small["id"] == DETECTION_TEMPLATE and "under 32 px, so tiling (auto) will cut tiles" in why
    masks, why = choose_template(split_specs(ROOT / "samples" / "coco-seg-mini" / "data.yaml"))
    assert masks["id"] == SEGMENTATION_TEMPLATE and "instance segmentation" in why


def test_train_without_a_template_says_which_it_chose_and_why(tmp_path, otxlite):
    (tmp_path / "data").mkdir()
    data = large_object_data(tmp_path / "data")  # the images folder is data/: the run goes beside it
    status, _, err = otxlite("train", "--data", data, "--no-pretrained", "--output", tmp_path / "run",
                             "params", "--learning_parameters.num_iters", "1", "--learning_parameters.batch_size", "2")
    assert status == 0, err
    assert f"No template given: chose {DETECTION_TEMPLATE} (boxes only, so detection, and {DETECTION_TEMPLATE} " \
           f"fine-tunes ImageNet weights offline; part' median object" in err
    weights = __import__("torch").load(tmp_path / "run" / "weights.pth", weights_only=True)
    assert weights["template"]["id"] == DETECTION_TEMPLATE


def test_find_with_data_ranks_the_auto_choice_first(otxlite):
    status, out, err = otxlite("find", "--data", SAMPLE / "data.yaml")
    assert status == 0, err
    rows = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| ") and "RANK" not in line]
    assert rows[0] == DETECTION_TEMPLATE and len(rows) == len(otx.find("detection"))
    assert "Rank 1 is the auto choice" in out
    status, out, err = otxlite("find", "--data", SAMPLE / "data.yaml", "--task", "instance_segmentation")
    assert status == 2 and "a detection dataset" in err


def test_train_with_no_objects_at_all_is_an_error_naming_the_file(tmp_path, otxlite):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "a.jpg")
    write_coco(folder / "train.json", [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
               [{"id": 1, "name": "part"}], [])
    (folder / "data.yaml").write_text("data:\n  train: {ann-files: train.json, data-roots: .}\n")
    status, _, err = otxlite("train", "--data", folder / "data.yaml", "--output", tmp_path / "run")
    assert status == 2 and "train.json: the train split has no objects" in err


# ---------------------------------------------------------------- examples, --help, docs


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_command_help_ends_with_real_examples(command, otxlite):
    args = ["data", command] if command in ("check", "convert") else [command]
    status, out, _ = otxlite(*args, "--help")
    assert status == 0
    examples = out[out.rindex("Examples:"):].splitlines()[1:]
    assert examples and all(line.strip().startswith("$ otxlite ") for line in examples if line.strip())
    for line in examples:  # the files an example names are in the repository (or made by the quick start)
        for word in line.split():
            if word.startswith("samples/"):
                assert (ROOT / word).exists(), word


def example_environment(tmp_path):
    return {**os.environ, "OTXLITE_EXAMPLE_DATA": str(SAMPLE / "data.yaml"), "OTXLITE_EXAMPLE_EPOCHS": "1",
            "OTXLITE_EXAMPLE_OUTPUT": str(tmp_path / "run")}


def test_the_example_script_runs_top_to_bottom(tmp_path):
    result = spawn([sys.executable, ROOT / "examples" / "quickstart.py"], 900, example_environment(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test mAP@0.5" in result.stdout and "INT8 test mAP@0.5" in result.stdout
    assert (tmp_path / "run" / "BloodImage_00007.png").is_file()


NOTEBOOK_RUNNER = """import sys, nbclient, nbformat
notebook = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(notebook, sys.argv[2])
"""


def test_the_notebook_runs_top_to_bottom(tmp_path):
    import nbformat

    executed = tmp_path / "executed.ipynb"  # nbclient runs in a process of its own: no kernel or zmq left in this one
    result = spawn([sys.executable, "-c", NOTEBOOK_RUNNER, ROOT / "examples" / "quickstart.ipynb", executed,
                    ROOT / "examples"], 1200, example_environment(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(executed, as_version=4)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # detections.plot() shows the picture
    assert (tmp_path / "run" / "optimize" / "openvino.xml").is_file()


def test_the_docs_build_strictly(tmp_path):
    """A broken link, a missing page or an API name that no longer exists fails mkdocs build --strict."""
    mkdocs = os.path.join(os.path.dirname(sys.executable), "mkdocs")
    result = spawn([mkdocs, "build", "--strict", "--config-file", ROOT / "mkdocs.yml", "--site-dir",
                    tmp_path / "site"], 600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
