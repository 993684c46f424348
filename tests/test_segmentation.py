"""Instance segmentation: masks read from every format, checked, trained on, and scored as pycocotools does."""

import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, quantized_modules, write_coco
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import paste_masks_in_image

from otxlite.core.errors import OtxliteError
from otxlite.core.files import save_checkpoint
from otxlite.core.labels import LabelSchema
from otxlite.core.tasks import task_of
from otxlite.data.formats import read_split
from otxlite.data.formats.base import Sample, decode_image
from otxlite.data.formats.shapes import instance_masks
from otxlite.data.records import check_split, load_splits
from otxlite.data.specs import read_data_yaml, split_specs
from otxlite.engine.evaluate import coco_ground_truth, coco_results, score
from otxlite.engine.train import train
from otxlite.export.deploy_runner import Detector, coco_rle, paste_mask
from otxlite.export.exporter import export
from otxlite.export.optimize import optimize
from otxlite.inference.predict import predict_files
from otxlite.inference.backends import load_predictor, signal_stack_kept, unmatched_detections
from otxlite.models.templates import resolve_template

MINI = ROOT / "samples" / "coco-seg-mini"


def masks_of(split):
    return [instance_masks(s.shapes, s.width, s.height) for s in split.samples]


@pytest.fixture
def coco_seg(tmp_path):
    """One 40x30 image with a polygon, a compressed RLE, an uncompressed RLE and a crowd region."""
    Image.new("RGB", (40, 30), "gray").save(tmp_path / "a.png")
    square = np.zeros((30, 40), np.uint8)
    square[5:15, 20:30] = 1
    compressed = coco_mask.encode(np.asfortranarray(square))
    uncompressed = {"size": [30, 40], "counts": [60, 60, 30 * 40 - 120]}  # column-major: columns 2 and 3 set
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 10, 10],
         "segmentation": {"size": [30, 40], "counts": compressed["counts"].decode()}},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [2, 0, 2, 30], "segmentation": uncompressed},
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [30, 20, 10, 10], "iscrowd": 1,
         "segmentation": {"size": [30, 40], "counts": compressed["counts"].decode()}},
    ]
    path = write_coco(tmp_path / "coco.json", [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                      [{"id": 3, "name": "cell"}, {"id": 5, "name": "fibre"}], annotations)
    return path, square


def test_coco_polygons_and_rles_become_masks(coco_seg):
    path, square = coco_seg
    split, problems = check_split(split_specs(train_ann_files=str(path))["train"], masks=True)
    assert not problems
    masks = masks_of(split)[0]
    assert masks.shape == (4, 30, 40)
    assert masks[0].sum() == 100 and masks[0][:10, :10].all()  # the 10x10 polygon
    assert np.array_equal(masks[1], square)  # compressed RLE
    assert masks[2].sum() == 60 and masks[2][:, 2:4].all()  # uncompressed RLE: columns 2 and 3
    assert split.samples[0].ignored == [False, False, False, True]


def test_yolo_seg_with_names_mapping_with_gaps_reads_polygons():
    specs = read_data_yaml(MINI / "data.yaml")
    split, problems = check_split(specs["train"], masks=True)
    assert not [p for p in problems if p.fatal]
    assert split.class_order[0] == "person"
    sample = max(split.samples, key=lambda s: len(s.boxes))
    masks = instance_masks(sample.shapes, sample.width, sample.height)
    assert len(masks) == len(sample.boxes) > 10
    for mask, box in zip(masks, sample.boxes):  # each mask lies inside its box (pixel edges, 1 px rounding)
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert columns[0] >= box[0] - 1 and columns[-1] + 1 <= box[2] + 1
        assert rows[0] >= box[1] - 1 and rows[-1] + 1 <= box[3] + 1


def penn_fudan(folder):
    """coco-seg-mini's train images as Penn-Fudan lays them out: PNGImages/ and PedMasks/<stem>_mask.png,
    every instance a value 1..N; returns ({stem: masks}, data.yaml)."""
    split = check_split(read_data_yaml(MINI / "data.yaml")["train"], masks=True)[0]
    (folder / "PNGImages").mkdir(parents=True)
    (folder / "PedMasks").mkdir()
    expected = {}
    for sample in split.samples[:3]:
        shutil.copy(sample.image, folder / "PNGImages" / sample.image.name)
        masks = instance_masks(sample.shapes, sample.width, sample.height)
        values = np.zeros(masks.shape[1:], np.uint8)
        for value, mask in enumerate(masks, 1):
            values[mask > 0] = value  # later instances cover earlier ones, as in a real mask image
        Image.fromarray(values).save(folder / "PedMasks" / f"{sample.image.stem}_mask.png")
        expected[sample.image.stem] = [values == v for v in range(1, len(masks) + 1) if (values == v).any()]
    data = folder / "data.yaml"
    data.write_text("data:\n  train: {ann-files: PedMasks, data-roots: PNGImages, names: [pedestrian]}\n"
                    "  val: {ann-files: PedMasks, data-roots: PNGImages, names: [pedestrian]}\n")
    return expected, data


def test_penn_fudan_mask_pngs_give_one_instance_per_value(tmp_path):
    expected, data = penn_fudan(tmp_path)
    split, problems = check_split(read_data_yaml(data)["train"], masks=True)
    assert not problems and split.class_order == ["pedestrian"]
    for sample, masks in zip(split.samples, masks_of(split)):
        assert np.array_equal(masks.astype(bool), np.stack(expected[sample.image.stem]))
        for mask, (x1, y1, x2, y2) in zip(masks, sample.boxes):
            rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert (x1, y1, x2, y2) == (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)


def test_labelme_polygons_rectangles_and_groups(tmp_path):
    Image.new("RGB", (50, 40)).save(tmp_path / "b.jpg")
    shapes = [{"label": "leaf", "points": [[0, 0], [10, 0], [10, 10], [0, 10]], "shape_type": "polygon"},
              {"label": "bug", "points": [[20, 20], [30, 30]], "shape_type": "rectangle"},
              {"label": "leaf", "points": [[40, 0], [50, 0], [50, 5]], "group_id": 1, "shape_type": "polygon"},
              {"label": "leaf", "points": [[40, 30], [50, 30], [50, 40]], "group_id": 1, "shape_type": "polygon"}]
    (tmp_path / "b.json").write_text(json.dumps({"shapes": shapes, "imagePath": "b.jpg", "imageHeight": 40,
                                                 "imageWidth": 50, "imageData": None}))
    split, problems = check_split(split_specs(train_ann_files=str(tmp_path))["train"], masks=True)
    assert not problems
    sample = split.samples[0]
    assert sample.classes == ["leaf", "bug", "leaf"]
    assert sample.boxes[1] == [20, 20, 30, 30] and sample.boxes[2] == [40, 0, 50, 40]  # two parts, one instance
    masks = instance_masks(sample.shapes, 50, 40)
    assert masks[1].sum() == 100 and masks[2][:5].any() and masks[2][30:].any() and not masks[2][10:25].any()

    shapes.append({"label": "leaf", "points": [[1, 1], [5, 5]], "shape_type": "line"})
    (tmp_path / "b.json").write_text(json.dumps({"shapes": shapes, "imagePath": "b.jpg"}))
    with pytest.raises(Exception, match=r"b.json \(shapes\[4\]\): shape_type 'line'"):
        read_split(split_specs(train_ann_files=str(tmp_path))["train"])


def test_bad_polygons_are_dropped_and_boxes_without_masks_are_errors(tmp_path, otxlite):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                    "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                   {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "segmentation": [[0, 0, 10, 10]]},
                   {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10],
                    "segmentation": [[0, 0, 5, 5, 10, 10]]},
                   {"id": 4, "image_id": 1, "category_id": 1, "bbox": [3, 0, 10, 10],
                    "segmentation": [[50, 50, 60, 50, 60, 60]]},
                   {"id": 5, "image_id": 1, "category_id": 1, "bbox": [4, 0, 10, 10],
                    "segmentation": {"size": [30, 40], "counts": [600, 700]}},
                   {"id": 6, "image_id": 1, "category_id": 1, "bbox": [5, 0, 10, 10],
                    "segmentation": {"size": [30, 40], "counts": "\x80"}}]
    path = write_coco(tmp_path / "coco.json", [{"id": 1, "file_name": "a.png"}], [{"id": 1, "name": "cell"}],
                      annotations)
    spec = split_specs(train_ann_files=str(path))["train"]
    split, problems = check_split(spec, masks=True)
    assert [p.message.split(": the ")[1] for p in problems] == [
        "polygon has fewer than 3 points; instance dropped.", "polygon has zero area; instance dropped.",
        "polygon lies wholly outside the 40x30 image; instance dropped.",
        *["RLE mask has counts that are not runs covering the 40x30 image; instance dropped."] * 2]
    assert [p.where for p in problems] == [f"{path} (annotations[{i}])" for i in (1, 2, 3, 4, 5)]
    assert len(split.samples[0].boxes) == 1
    assert len(check_split(spec)[0].samples[0].boxes) == 6  # detection ignores the masks
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  train: {{ann-files: {path}}}\n")
    status, out, _ = otxlite("data", "check", "--data", data)
    assert status == 0 and "  1 boxes with masks" in out  # after the 5 bad shapes were dropped
    assert out.count("warning bad shape: ") == 5 and "polygon has fewer than 3 points; instance dropped." in out

    del annotations[0]["segmentation"]
    write_coco(path, [{"id": 1, "file_name": "a.png"}], [{"id": 1, "name": "cell"}], annotations[:1])
    data.write_text(f"data:\n  train: {{ann-files: {path}}}\n  val: {{ann-files: {path}}}\n")
    status, _, err = otxlite("train", "maskrcnn_mobilenet_v3_large_fpn", "--data", data, "--no-pretrained",
                             "--output", tmp_path / "run")
    assert status == 2
    assert f"{path} (annotations[0]): the instance has a box but no mask" in err and "Traceback" not in err


@pytest.mark.parametrize("layout", ["yolo-seg", "penn-fudan"])
def test_convert_to_coco_writes_the_masks_it_read(tmp_path, otxlite, layout):
    data = MINI / "data.yaml" if layout == "yolo-seg" else penn_fudan(tmp_path)[1]
    status, _, err = otxlite("data", "convert", "--data", data, "--output", tmp_path / "coco")
    assert status == 0, err
    before = load_splits(read_data_yaml(data), task="instance_segmentation")[0]
    after = load_splits(read_data_yaml(tmp_path / "coco" / "data.yaml"), task="instance_segmentation")[0]
    assert before.keys() == after.keys()
    for name in before:
        for one, other in zip(masks_of(before[name]), masks_of(after[name]), strict=True):
            assert len(one) and np.array_equal(one, other), name


def test_mask_images_of_another_size_are_errors(tmp_path):
    expected, data = penn_fudan(tmp_path)
    mask = next((tmp_path / "PedMasks").iterdir())
    Image.open(mask).resize((20, 10)).save(mask)
    with pytest.raises(Exception, match=rf"{mask.name} \(value 1\): the mask {mask.name} value 1 is 20x10, but its "
                                        rf"image is \d+x\d+. Masks must match their image."):
        load_splits(read_data_yaml(data), task="instance_segmentation")


def random_instances(generator, count, size=48):
    """count random rectangles-with-holes as masks on a size x size image, with their boxes."""
    masks = np.zeros((count, size, size), np.uint8)
    for mask in masks:
        x, y = generator.integers(0, size - 12, 2)
        w, h = generator.integers(6, 12, 2)
        mask[y:y + h, x:x + w] = 1
        mask[y + 2:y + 4, x + 2:x + 4] = 0
    return masks


def test_mask_ap_table_matches_pycocotools_segm():
    """The per-class table's mAP (otxlite's own matching on mask IoU) equals pycocotools' segm mAP@0.5."""
    generator = np.random.default_rng(0)
    schema = LabelSchema.of_classes(["a", "b"], "instance_segmentation")
    samples, predictions = [], []
    for image in range(6):
        truth = random_instances(generator, 4)
        sample = Sample(f"img{image}.png", "test", width=48, height=48)
        for k, mask in enumerate(truth):
            rle = coco_mask.encode(np.asfortranarray(mask))
            x, y, w, h = coco_mask.toBbox(rle)
            sample.add([x, y, x + w, y + h], "ab"[k % 2], f"record {k}", ignored=k == 3, shape=RleShape(rle))
        samples.append(sample)
        detected = np.concatenate([np.roll(truth[:3], generator.integers(-3, 4), axis=2), random_instances(generator, 3)])
        rles = coco_mask.encode(np.asfortranarray(detected.transpose(1, 2, 0)))
        boxes = coco_mask.toBbox(rles)
        predictions.append({"boxes": np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]],
                            "scores": generator.random(6), "labels": generator.integers(1, 3, 6), "rles": rles})
    performance, result = score(samples, predictions, schema)

    ground_truth = coco_ground_truth(samples, schema)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(
            [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results(predictions)]), "segm")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.evaluate()
        evaluator.accumulate()
    reference = evaluator.eval["precision"][0, :, :, 0, -1]  # [recall, class] at IoU 0.5, all areas, 100 dets
    assert result["map"] == pytest.approx(float(np.mean([reference[:, c].mean() for c in range(2)])), abs=1e-9)
    assert performance["segm_map_50"] == pytest.approx(result["map"], abs=1e-9)
    assert performance["segm_map_50"] != pytest.approx(performance["map_50"])  # box and mask figures differ
    assert set(performance) >= {"segm_map_50", "segm_map_50_95", "map_50", "map_50_95", "f-measure"}


class RleShape:
    """A test shape that is already a pycocotools RLE."""

    def __init__(self, rle):
        self.encoded = rle

    def rle(self, width, height):
        return self.encoded


def otxlite_process(*args):
    """(exit status, stderr) of otxlite in its own process, as a user runs it: DataLoader workers (the templates'
    default 2) are not forked out of a test process where OpenVINO threads may already run."""
    done = subprocess.run([sys.executable, "-m", "otxlite", *map(str, args)], capture_output=True, text=True)
    return done.returncode, done.stderr


def test_maskrcnn_trains_evaluates_and_keeps_its_task(tmp_path):
    template = yaml.safe_load((ROOT / "templates" / "instance_segmentation" / "maskrcnn_mobilenet_v3_large_fpn" /
                               "template.yaml").read_text())
    template["model"]["kwargs"].update(min_size=128, max_size=160, box_detections_per_img=20)
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(template))
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
        for name in ("000000000165", "000000000529"):
            shutil.copy(next((MINI / folder / "train").glob(f"{name}.*")), tmp_path / folder)
    data = tmp_path / "data.yaml"
    names = yaml.safe_load((MINI / "data.yaml").read_text())["names"]
    data.write_text(yaml.safe_dump({"path": ".", "train": "images", "val": "images", "test": "images",
                                    "names": names}))
    status, err = otxlite_process("train", path, "--data", data, "--no-pretrained", "--output", tmp_path / "run",
                                  "params", "--learning_parameters.num_iters", "1", "--learning_parameters.batch_size", "2")
    assert status == 0, err
    assert "val mask mAP@0.5" in err and "box mAP@0.5" in err
    assert json.loads((tmp_path / "run" / "label_schema.json").read_text())["task"] == "instance_segmentation"
    assert "loss_mask" in (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]
    checkpoint = torch.load(tmp_path / "run" / "weights.pth", weights_only=True)
    assert task_of(checkpoint["template"]).masks and "roi_heads.mask_predictor.mask_fcn_logits.weight" in checkpoint["model"]

    status, err = otxlite_process("eval", "--load-weights", tmp_path / "run" / "weights.pth", "--data", data,
                                  "--output", tmp_path / "eval")
    assert status == 0, err
    performance = json.loads((tmp_path / "eval" / "performance.json").read_text())
    assert {"segm_map_50", "segm_map_50_95", "map_50", "map_50_95"} <= set(performance)
    assert "mask ap" in err


@pytest.fixture(scope="module")
def fitted_segmenter(tmp_path_factory):
    """Mask R-CNN (MobileNetV3) fitted to two coco-seg-mini images at a 160 px input, exported: (root, weights)."""
    root = tmp_path_factory.mktemp("segmenter")
    for folder in ("images", "labels"):
        (root / folder).mkdir()
        for name in ("000000000165", "000000000529"):
            shutil.copy(next((MINI / folder / "train").glob(f"{name}.*")), root / folder)
    names = yaml.safe_load((MINI / "data.yaml").read_text())["names"]
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "val": "images",
                                                    "test": "images", "names": names}))
    template = resolve_template("maskrcnn_mobilenet_v3_large_fpn")
    template["model"]["kwargs"].update(min_size=160, max_size=224)
    template["hyper_parameters"]["learning_parameters"].update(
        batch_size=2, num_workers=0, warmup_iters=2, lr_scheduler="cosine", enable_early_stopping=False)
    weights = train(template, read_data_yaml(root / "data.yaml"), root / "run",
                    {"learning_parameters.num_iters": "20", "learning_parameters.learning_rate": "0.02",
                     "augmentation": "{}"}, pretrained=False)
    export(weights, root / "export")
    return root, weights


@pytest.mark.parametrize("name", ["run/weights.pth", "export/openvino.xml"])
def test_otxlite_serve_answers_masks_as_predict_writes_them(fitted_segmenter, name, tmp_path):
    from test_serve import Server, predicted

    model, image = fitted_segmenter[0] / name, fitted_segmenter[0] / "images" / "000000000165.jpg"
    running = Server(model)
    try:
        answer = running.predict(image.read_bytes(), image.name, threshold=0.05)
    finally:
        running.stop()
    expected = predicted(model, tmp_path, "--threshold", "0.05", image=image)
    assert expected and all("counts" in record["segmentation"] for record in expected)
    assert answer.status_code == 200 and answer.json() == expected


def test_ray_engine_writes_the_masks_the_local_engine_writes(fitted_segmenter, tmp_path, ray_stopped_after):
    pytest.importorskip("ray.data")
    from otxlite.core.ray_cluster import OnRay
    from otxlite.inference.writers import read_predictions

    model, images = fitted_segmenter[0] / "export" / "openvino.xml", fitted_segmenter[0] / "images"
    predict_files(model, images, tmp_path / "local", threshold=0.05)
    predict_files(model, images, tmp_path / "ray", threshold=0.05, ray=OnRay(workers=2), batch_size=1)
    rows = read_predictions(tmp_path / "ray")
    assert len(rows) == 2 and all(row["segmentation"] and len(row["segmentation"]) == len(row["score"]) for row in rows)
    assert rows == read_predictions(tmp_path / "local")


def test_exported_masks_match_pytorch_on_every_backend(fitted_segmenter):
    """Every confident detection has a partner on ONNX Runtime and OpenVINO whose mask IoU is at least 0.98,
    on images of several sizes and aspect ratios."""
    root, weights = fitted_segmenter
    predictors = {path.name: load_predictor(path) for path in (weights, root / "export" / "model.onnx",
                                                                root / "export" / "openvino.xml")}
    image = decode_image(root / "images" / "000000000165.jpg")
    images = [image, np.ascontiguousarray(image[:300, :500]), np.ascontiguousarray(image[:, :260]),
              np.asarray(Image.fromarray(image).resize((800, 400)))]
    compared = 0
    for picture in images:
        found = {name: predictor([picture])[0] for name, predictor in predictors.items()}
        reference = found.pop("weights.pth")
        confident = np.flatnonzero(reference["scores"] >= 0.5)
        for name, other in found.items():
            assert not unmatched_detections(reference, other, 0.5, box_tolerance=1.0, score_tolerance=2e-3), name
            for i in confident:
                partner = np.argmin(np.abs(other["boxes"] - reference["boxes"][i]).max(axis=1))
                iou = coco_mask.iou([reference["rles"][i]], [other["rles"][partner]], [0])[0, 0]
                assert iou >= 0.98, (name, picture.shape, i, iou)
                compared += 1
    # the fitted model is confident on its images: 3 confident detections over the 4 pictures on one CPU, more on
    # another (training differs in the last bits across CPUs); each is compared on both exported backends
    assert compared >= 6


def test_exported_masks_are_per_box_and_the_deploy_runner_pastes_them_as_predict_does(fitted_segmenter):
    """The IR returns 28x28 masks per detection; the deploy runner's numpy pasting gives predict's masks (to a pixel
    that float rounding can put on the other side of the 0.5 threshold)."""
    root, _ = fitted_segmenter
    xml = root / "export" / "openvino.xml"
    predictor = load_predictor(xml)
    with signal_stack_kept():  # OpenVINO compiling on this thread would leave it on a stack it unmaps
        detector = Detector(xml.parent)
    image = decode_image(root / "images" / "000000000165.jpg")
    for picture in (image, np.ascontiguousarray(image[:300, :500]), np.asarray(Image.fromarray(image).resize((800, 400)))):
        expected = predictor([picture])[0]
        boxes, scores, labels, masks = detector(picture)
        assert masks.shape == (len(boxes), 28, 28) and len(boxes) == len(expected["boxes"]) > 0
        for i in np.flatnonzero(scores > 0.5):  # a pixel may round the other way at the 0.5 threshold
            pasted = paste_mask(masks[i], boxes[i], *picture.shape[:2])
            assert np.sum(pasted != coco_mask.decode(expected["rles"][i])) <= 1, (picture.shape, i)


def test_a_model_exported_with_masks_pasted_inside_is_refused_with_the_fix(fitted_segmenter, tmp_path):
    import onnx

    root, _ = fitted_segmenter
    proto = onnx.load(root / "export" / "model.onnx")
    kept = [prop for prop in proto.metadata_props if prop.key != "mask_output"]  # as otxlite wrote it before
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, tmp_path / "model.onnx")
    shutil.copy(root / "export" / "label_schema.json", tmp_path)
    with pytest.raises(OtxliteError, match="pasted the masks inside the model. Export it again"):
        load_predictor(tmp_path / "model.onnx")


def test_no_detection_is_empty_on_every_backend_and_predict_writes_rle(fitted_segmenter, tmp_path):
    root, weights = fitted_segmenter
    checkpoint = torch.load(weights, weights_only=True)
    checkpoint["template"]["model"]["kwargs"]["box_score_thresh"] = 1.0  # nothing passes: no detection
    silent = tmp_path / "silent" / "weights.pth"
    silent.parent.mkdir()
    save_checkpoint(silent, checkpoint)
    shutil.copy(weights.parent / "label_schema.json", silent.parent)
    export(silent, tmp_path / "silent" / "export")
    image = decode_image(root / "images" / "000000000165.jpg")
    for path in (silent, tmp_path / "silent" / "export" / "model.onnx", tmp_path / "silent" / "export" / "openvino.xml"):
        found = load_predictor(path)([image])[0]
        assert len(found["boxes"]) == len(found["scores"]) == len(found["labels"]) == len(found["rles"]) == 0, path

    results = predict_files(root / "export" / "openvino.xml", root / "images", tmp_path / "results.json", threshold=0.5)
    records = json.loads(results.read_text())
    assert records and all(set(r["segmentation"]) == {"size", "counts"} for r in records)
    truth = COCO()
    truth.dataset = {"images": [{"id": i, "width": 640, "height": 480} for i in (1, 2)], "annotations": [],
                     "categories": [{"id": c} for c in {r["category_id"] for r in records}]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        loaded = truth.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in records])
    assert len(loaded.anns) == len(records) and all(a["area"] > 0 for a in loaded.anns.values())


def test_optimize_quantizes_the_mask_head_and_compares_mask_ap(fitted_segmenter, tmp_path):
    root, _ = fitted_segmenter
    int8 = optimize(root / "export" / "openvino.xml", read_data_yaml(root / "data.yaml"), tmp_path / "int8",
                    subset_size=2)
    assert any(module.startswith("/model/roi_heads/mask_head/") for module in quantized_modules(int8))
    performance = json.loads((tmp_path / "int8" / "performance.json").read_text())
    fp32, quantized = performance["comparison"]["fp32"], performance["comparison"]["int8"]
    assert {"segm_map_50", "segm_map_50_95", "map_50", "map_50_95", "latency_ms"} <= set(quantized)
    assert performance["segm_map_50_drop"] == pytest.approx(fp32["segm_map_50"] - quantized["segm_map_50"])
    assert quantized["segm_map_50"] == pytest.approx(performance["segm_map_50"])
    found = load_predictor(int8)([decode_image(root / "images" / "000000000165.jpg")])[0]
    assert len(found["rles"]) == len(found["boxes"]) > 0


def test_qat_on_mask_rcnn_quantizes_the_mask_head_and_exports_masks(fitted_segmenter, tmp_path):
    root, weights = fitted_segmenter
    int8 = optimize(weights, read_data_yaml(root / "data.yaml"), tmp_path / "qat", subset_size=2,
                    overrides={"qat.epochs": "1"})
    assert json.loads((tmp_path / "qat" / "config.json").read_text())["quantization"]["method"] == "qat"
    assert any(module.startswith("/model/roi_heads/mask_head/") for module in quantized_modules(int8))
    performance = json.loads((tmp_path / "qat" / "performance.json").read_text())
    assert {"segm_map_50", "map_50"} <= set(performance["comparison"]["int8"])
    image = decode_image(root / "images" / "000000000165.jpg")
    for path in (int8, tmp_path / "qat" / "weights_int8.pth"):
        found = load_predictor(path)([image])[0]
        assert len(found["rles"]) == len(found["boxes"]) > 0, path


def test_mask_rcnn_exported_with_explain_gives_the_maps_of_weights_pth(fitted_segmenter, tmp_path):
    root, weights = fitted_segmenter
    export(weights, tmp_path, explain=True)
    for image in [decode_image(path) for path in sorted((root / "images").iterdir())]:
        expected = load_predictor(weights, explain=True)([image])[0]["saliency"]
        assert expected.std() > 0.01  # a fitted model's maps are not uniform
        for model_file in ("model.onnx", "openvino.xml"):
            with signal_stack_kept():
                got = load_predictor(tmp_path / model_file, explain=True)([image])[0]["saliency"]
            assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, model_file


def test_deploy_runner_pastes_masks_as_torchvision_does():
    """Boxes of every size (under a pixel to larger than the mask), at the image's edges, on images of many sizes."""
    generator = np.random.default_rng(0)
    for trial in range(100):
        height, width = (int(v) for v in generator.integers(5, 200, 2))
        corners = generator.uniform(-30, [width, height], (4, 2))
        sizes = generator.uniform(0, 150, (4, 2)) * (trial % 5 != 0) + generator.uniform(0, 3, (4, 2))
        boxes = np.clip(np.concatenate([corners, corners + sizes], 1), 0, [width, height, width, height])
        boxes = boxes.astype(np.float32)
        masks = generator.random((4, 1, 28, 28)).astype(np.float32)
        expected = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (height, width))
        for mask, box, reference in zip(masks, boxes, expected[:, 0].numpy() > 0.5):
            assert np.sum(paste_mask(mask[0], box, height, width) != reference) <= 1, (trial, box)  # float rounding


def test_deploy_runner_encodes_rle_as_pycocotools_does():
    generator = np.random.default_rng(0)
    for trial in range(200):
        height, width = generator.integers(1, 40, 2)
        mask = generator.random((height, width)) < generator.random()
        mask[:] = True if trial % 7 == 0 else mask
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_rle(mask) == {"size": [int(height), int(width)], "counts": reference["counts"].decode()}


def test_eval_of_a_mask_model_on_boxes_without_masks_is_refused(fitted_segmenter, tmp_path, otxlite):
    root, weights = fitted_segmenter
    (tmp_path / "labels").mkdir()
    for label in (root / "labels").glob("*.txt"):  # the same objects, as boxes only (class cx cy w h)
        boxes = []
        for line in label.read_text().splitlines():
            values = line.split()
            xs, ys = [float(v) for v in values[1::2]], [float(v) for v in values[2::2]]
            boxes.append(f"{values[0]} {(min(xs) + max(xs)) / 2} {(min(ys) + max(ys)) / 2} {max(xs) - min(xs)} "
                         f"{max(ys) - min(ys)}")
        (tmp_path / "labels" / label.name).write_text("\n".join(boxes) + "\n")
    shutil.copytree(root / "images", tmp_path / "images")
    names = yaml.safe_load((root / "data.yaml").read_text())["names"]
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "val": "images",
                                                        "test": "images", "names": names}))
    status, _, err = otxlite("eval", "--load-weights", weights, "--data", tmp_path / "data.yaml")
    assert status == 2 and "have a box but no mask" in err and "mask mAP would mean nothing" in err, err


def test_mask_pre_annotations_are_polygons_that_every_format_reads_back_as_the_predicted_masks(
        fitted_segmenter, tmp_path, otxlite):
    root, weights = fitted_segmenter
    predicted = json.loads(predict_files(weights, root / "images", tmp_path / "results.json",
                                         threshold=0.05).read_text())
    assert predicted
    expected = {}
    for record in predicted:
        expected.setdefault(record["file_name"], []).append(coco_mask.decode(record["segmentation"]))
    for fmt in ("coco", "yolo", "labelme", "cvat"):
        status, _, err = otxlite("predict", "--load-weights", weights, "--input", root / "images", "--output",
                                 tmp_path / fmt, "--format", fmt, "--threshold", "0.05")
        assert status == 0, err
        status, report, _ = otxlite("data", "check", "--data", tmp_path / fmt / "data.yaml")
        assert status == 0 and "instance" in report, report
        splits, _ = load_splits(read_data_yaml(tmp_path / fmt / "data.yaml"), task="instance_segmentation")
        for sample in splits["train"].samples:
            masks = [shape.rle(sample.width, sample.height) for shape in sample.shapes]
            wanted = expected.get(sample.image.name, [])
            assert len(masks) == len(wanted), fmt
            for mask, truth in zip(masks, wanted):
                if truth.sum() >= 100:  # a mask too thin to outline comes as its box
                    truth = coco_mask.encode(np.asfortranarray(truth))
                    assert coco_mask.iou([mask], [truth], [0])[0][0] > 0.8, fmt
