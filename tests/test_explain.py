import math

import numpy as np
import pytest
import torch
from conftest import voc_boxes
from PIL import Image

from otxlite.core.labels import LabelSchema
from otxlite.export import deploy_runner
from otxlite.inference.backends import load_predictor, signal_stack_kept
from otxlite.models.saliency import level_average, painted_proposals


def test_proposals_paint_a_bump_of_their_class_probabilities_into_their_boxes_the_highest_where_they_overlap():
    # cell centres at 4, 12, 20, 28 px; box A centred at 8 (sigma 4), box B at 20 (sigma 6)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]])
    probabilities = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    first, second = painted_proposals([boxes, boxes[:0]], probabilities, [32, 32])
    assert first[0, 0, 0] == pytest.approx(0.9 * math.exp(-1))  # 4 px from A's centre on both axes
    assert first[0, 2, 2] == pytest.approx(0.5)  # B's centre
    assert first[0, 0, 3] == 0 and first[1, 3, 0] == 0  # in no box
    assert first[0, 1, 1] == pytest.approx(0.9 * math.exp(-1))  # in both: A's 0.331 over B's 0.5 e^(-16/9)
    assert first[1, 1, 1] == pytest.approx(0.6 * math.exp(-16 / 9))  # in both: B's 0.101 over A's 0.2 e^-1
    assert torch.equal(second, torch.zeros(2, 4, 4))  # an image without proposals


def test_levels_take_the_best_anchor_of_a_cell_and_average_on_the_finest_grid():
    fine = torch.zeros(1, 2 * 3, 2, 2)  # 2 anchors x (background + 2 classes), sigmoid logits 0: probability 0.5
    fine[0, 3 + 1, 0, 0] = 100.0  # the second anchor is sure of class 1 in the top-left cell
    coarse = torch.zeros(1, 2 * 3, 1, 1)
    maps = level_average([fine, coarse], classes=3, softmax=False)
    expected = torch.full((1, 2, 2, 2), 0.5)
    expected[0, 0, 0, 0] = 0.75
    assert torch.equal(maps, expected)


def test_explain_writes_maps_whose_hottest_cell_lies_on_an_object_of_the_class(exported, otxlite, tmp_path):
    """On an image the model was fitted to, each class it detects there has its map's hottest cell inside one of
    the class's boxes: for WBC, the image's one white cell (the fitted SSDlite finds it; the fitted Faster
    R-CNN finds only the red cells)."""
    weights, export, data = exported
    image = data.parent / "images" / "BloodImage_00001.jpg"
    truth = voc_boxes(data.parent / "images" / "BloodImage_00001.xml")
    status, _, err = otxlite("explain", "--load-weights", weights, "--input", image, "--output", tmp_path / "maps")
    assert status == 0, err
    folder = tmp_path / "maps" / "BloodImage_00001_jpg"
    assert sorted(p.name for p in folder.iterdir()) == ["1-WBC.png", "2-RBC.png", "3-Platelets.png", "saliency.npy"]
    width, height = Image.open(image).size
    assert Image.open(folder / "1-WBC.png").size == (width, height)
    maps = np.load(folder / "saliency.npy")
    assert maps.dtype == np.float32 and maps.shape[0] == 3 and 0 <= maps.min() and maps.max() <= 1

    predictor = load_predictor(weights)
    detections = predictor([np.asarray(Image.open(image).convert("RGB"))])[0]
    found = {int(label) for label in detections["labels"][detections["scores"] > predictor.confidence_threshold]}
    assert 2 in found  # both fitted models find red cells
    names = LabelSchema.of(predictor.schema).name_of
    for label in found:
        class_map = maps[label - 1]
        assert np.ptp(class_map) > 0.1, names[label]  # not uniform (SSD's averaged softmax peaks near 0.26 here)
        row, column = np.unravel_index(class_map.argmax(), class_map.shape)
        x, y = (column + 0.5) * width / maps.shape[2], (row + 0.5) * height / maps.shape[1]
        assert any(x1 <= x <= x2 and y1 <= y <= y2 for name, (x1, y1, x2, y2) in truth if name == names[label]), \
            (names[label], x, y)

    status, _, err = otxlite("explain", "--load-weights", weights, "--input", image, "--output", tmp_path / "wbc",
                             "--target-classes", "WBC")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "wbc" / "BloodImage_00001_jpg").iterdir()) == ["1-WBC.png",
                                                                                              "saliency.npy"]


@pytest.mark.parametrize("args, message", [
    (["--target-classes", "Neutrophil"], "--target-classes Neutrophil: the model's classes are WBC, RBC, Platelets."),
    (["--load-weights", "{export}/openvino.xml"], "exported without saliency maps. Export the weights.pth with "
                                                  "`otxlite export --explain`")])
def test_explain_refuses_unknown_classes_and_models_exported_without_maps_in_one_line(exported, otxlite, tmp_path,
                                                                                       args, message):
    weights, export, data = exported
    args = [arg.format(export=export) for arg in args]
    model = [] if "--load-weights" in args else ["--load-weights", weights]
    status, _, err = otxlite("explain", *model, *args, "--input", data.parent / "images", "--output", tmp_path / "out")
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_models_exported_with_explain_give_the_maps_of_weights_pth_in_one_inference(exported, otxlite, tmp_path):
    weights, export, data = exported
    status, _, err = otxlite("export", "--load-weights", weights, "--output", tmp_path / "export", "--explain")
    assert status == 0, err
    images = data.parent / "images"
    status, _, err = otxlite("explain", "--load-weights", weights, "--input", images, "--output", tmp_path / "pth")
    assert status == 0, err
    image = np.asarray(Image.open(images / "BloodImage_00001.jpg").convert("RGB"))
    for model_file in ("model.onnx", "openvino.xml"):
        status, _, err = otxlite("explain", "--load-weights", tmp_path / "export" / model_file, "--input", images,
                                 "--output", tmp_path / model_file)
        assert status == 0, err
        for maps in sorted((tmp_path / "pth").glob("*/saliency.npy")):
            expected = np.load(maps)
            got = np.load(tmp_path / model_file / maps.parent.name / "saliency.npy")
            assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, (model_file, maps)
        # the maps are one more output: the detections are those of the model exported without them
        with_maps = load_predictor(tmp_path / "export" / model_file)([image])[0]
        without = load_predictor(export / model_file)([image])[0]
        assert "saliency" not in with_maps
        assert all(np.array_equal(with_maps[key], without[key]) for key in ("boxes", "scores", "labels"))
    with signal_stack_kept():  # OpenVINO compiling on this thread would leave it on a stack it unmaps
        runner = deploy_runner.Detector(tmp_path / "export")  # which reads the outputs it needs by name
        plain = deploy_runner.Detector(export)
    assert all(np.array_equal(a, b) for a, b in zip(runner(image)[:3], plain(image)[:3]))
