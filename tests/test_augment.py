"""Training augmentation (transforms.v2 pipeline, Mosaic), fitted anchors and the small-object warning."""

import logging
import re

import pytest
import torch
from conftest import SAMPLE
from torchvision import tv_tensors

import otxlite.engine.train
from otxlite.core.files import load_checkpoint
from otxlite.data.augment import Pipeline, without_heavy
from otxlite.data.loader import DetectionDataset, PipelineContext
from otxlite.data.records import load_splits
from otxlite.data.specs import split_specs
from otxlite.engine.train import train
from otxlite.models.anchors import fit_anchors, warn_small_objects
from otxlite.models.build import InputSize, anchors_of, build_model, model_from_checkpoint
from otxlite.models.templates import apply_overrides, resolve_template

COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]


def painted(height, width, boxes, with_masks=False, first=0):
    """A grey image whose box i is filled with COLORS[first + i] and labelled first + i + 1 (and its mask, when
    asked)."""
    image = torch.full((3, height, width), 128, dtype=torch.uint8)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[:, y1:y2, x1:x2] = torch.tensor(COLORS[first + i], dtype=torch.uint8)[:, None, None]
        masks[i, y1:y2, x1:x2] = 1
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                                canvas_size=(height, width)),
              "labels": torch.arange(first + 1, first + len(boxes) + 1)}
    if with_masks:
        target["masks"] = tv_tensors.Mask(masks)
    return tv_tensors.Image(image), target


def assert_boxes_cover_their_colour(image, target):
    """Each output box's centre pixel has its label's colour: the box moved with the image."""
    assert len(target["boxes"])
    for box, label in zip(target["boxes"].round().int().tolist(), target["labels"].tolist()):
        x, y = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        assert 0 <= box[0] < box[2] <= image.shape[-1] and 0 <= box[1] < box[3] <= image.shape[-2]
        colour = image[:, y, x].int()
        assert (colour - torch.tensor(COLORS[label - 1])).abs().max() <= 40, (box, label, colour)


GEOMETRIC = {"Mosaic": {"p": 0.5, "size": 200}, "RandomZoomOut": {"fill": 128, "side_range": [1.0, 2.0]},
             "RandomIoUCrop": {}, "RandomHorizontalFlip": {"p": 0.5}, "RandomVerticalFlip": {"p": 0.5},
             "ScaleJitter": {"target_size": [240, 320], "scale_range": [0.5, 1.5]}}


@pytest.mark.parametrize("seed", range(12))
def test_every_geometric_transform_moves_boxes_and_masks_with_the_image(seed):
    images = [painted(180, 260, [[10, 20, 70, 90], [120, 30, 200, 110], [40, 120, 110, 170]], with_masks=True),
              painted(300, 200, [[20, 20, 120, 150], [60, 180, 180, 280]], with_masks=True)]
    pipeline = Pipeline(GEOMETRIC)
    context = PipelineContext(lambda i: images[i], len(images))
    torch.manual_seed(seed)
    image, target = pipeline(*images[seed % 2], context)
    assert_boxes_cover_their_colour(image, target)
    assert target["masks"].shape == (len(target["boxes"]), *image.shape[-2:])
    for box, mask in zip(target["boxes"], target["masks"]):  # each mask lies inside its box
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) and xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_mosaic_joins_four_images_at_the_model_scale_and_repeats_with_its_seed():
    images = [painted(100, 160, [[10 + 10 * i, 10, 60 + 10 * i, 70], [100, 40, 150, 90]][::1 - 2 * (i % 2)],
                      first=2 * i) for i in range(3)] + [painted(100, 160, [[90, 20, 150, 90]], first=5)]
    context = PipelineContext(lambda i: images[i], 4, InputSize(min_size=100, max_size=1000))
    mosaic = Pipeline({"Mosaic": {"p": 1.0}})  # then boxes are clamped to the square, empty ones dropped

    def run(seed):
        torch.manual_seed(seed)
        return mosaic(*images[0], context)

    image, target = run(3)
    assert image.shape == (3, 100, 100)  # the model's input side; images kept at its scale (x1 here)
    assert target["boxes"].canvas_size == (100, 100)
    assert not (image == 114).all(0).any()  # the four tiles meet at the centre and fill the square
    assert_boxes_cover_their_colour(image, target)
    again_image, again_target = run(3)
    assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])
    assert not torch.equal(image, run(4)[0])
    widths = target["boxes"][:, 2] - target["boxes"][:, 0]
    assert (widths <= 50 + 1e-3).all()  # never enlarged past the model's scale


def test_unknown_transform_or_argument_is_one_clear_error(otxlite, tiny_voc, tmp_path):
    status, _, err = otxlite("train", "ssdlite320_mobilenet_v3_large", "--data", tiny_voc, "--no-pretrained",
                             "--output", tmp_path / "run", "params", "--augmentation.RandomFlip.p", "0.5")
    assert status == 2 and "Traceback" not in err
    assert "augmentation: unknown transform 'RandomFlip'. Did you mean" in err
    status, _, err = otxlite("train", "ssdlite320_mobilenet_v3_large", "--data", tiny_voc, "--no-pretrained",
                             "--output", tmp_path / "run", "params", "--augmentation.RandomZoomOut.side_range", "[0.5, 2]")
    assert status == 2 and "augmentation.RandomZoomOut" in err and "side range" in err


def test_params_override_an_entry_add_one_and_switch_one_off():
    template = resolve_template("ssdlite320_mobilenet_v3_large")
    changed = apply_overrides(template, {"augmentation.RandomHorizontalFlip.p": "0.8", "augmentation.Mosaic.p": "0.5",
                                         "augmentation.RandomVerticalFlip": "true",
                                         "augmentation.RandomPhotometricDistort": "false"})
    augmentation = changed["hyper_parameters"]["augmentation"]
    assert augmentation["RandomHorizontalFlip"] == {"p": 0.8} and augmentation["Mosaic"] == {"p": 0.5}
    assert augmentation["RandomVerticalFlip"] is True and augmentation["RandomPhotometricDistort"] is False
    steps = [type(step).__name__ for step in Pipeline(augmentation).steps]
    assert steps == ["RandomHorizontalFlip", "Mosaic", "RandomVerticalFlip"]  # new entries come last


def test_dataset_items_repeat_per_index_and_epoch_whatever_the_order():
    template = resolve_template("ssdlite320_mobilenet_v3_large")
    specs = split_specs(train_ann_files=str(SAMPLE), train_data_roots=str(SAMPLE / "JPEGImages"))
    splits, schema = load_splits({"train": specs["train"]})
    samples = splits["train"].samples[:6]
    model = build_model(template, len(schema["labels"]))
    dataset = DetectionDataset(samples, schema, Pipeline(template["hyper_parameters"]["augmentation"]),
                               InputSize.of(model), seed=1)
    first = [dataset[(i, 2)] for i in range(6)]
    backwards = [dataset[(i, 2)] for i in reversed(range(6))][::-1]
    for (image, target), (again, again_target) in zip(first, backwards):
        assert torch.equal(image, again) and torch.equal(target["boxes"], again_target["boxes"])
    assert any(not torch.equal(dataset[(i, 3)][0], first[i][0]) for i in range(6))


def small_boxes_dataset(tmp_path, count=6, big=False):
    """COCO data whose objects are 22-26 px squares in 320x320 images (BCCD's platelets at 320 px): far smaller
    than SSDlite's smallest anchor (0.2 x 320 = 64 px). With big, each image also has a 110 px square of a
    second class, which the default anchors match."""
    import json

    from PIL import Image
    images, annotations = [], []
    for i in range(count):
        Image.new("RGB", (320, 320), (90, 90, 90)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 320})
        for j in range(8):
            side = 22 + (i + j) % 5
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1,
                                "bbox": [20 + 35 * j, 30 + 30 * (j % 3), side, side]})
        if big:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 2,
                                "bbox": [100, 160, 110, 110]})
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "dot"}] + [{"id": 2, "name": "disc"}] * big}))
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  train: {{ann-files: {path}, data-roots: {tmp_path}}}\n"
                    f"  val: {{ann-files: {path}, data-roots: {tmp_path}}}\n")
    return data


def test_anchors_are_fitted_when_recall_is_low_and_travel_with_the_weights(tmp_path, caplog):
    data = small_boxes_dataset(tmp_path)
    template = resolve_template("ssdlite320_mobilenet_v3_large")
    template["hyper_parameters"]["anchors"]["fit"] = True  # the SSD templates' default is false
    splits, schema = load_splits(split_specs(data))
    model = build_model(template, 1)
    default = anchors_of(model)
    with caplog.at_level(logging.INFO, logger="otxlite"):
        fitted = fit_anchors(model, template, splits["train"].samples, schema, pretrained=False)
    assert "Anchor recall" in caplog.text and "Re-clustered anchor sizes and aspect ratios" in caplog.text
    before, after = map(float, re.search(r"recall ([0-9.]+) -> ([0-9.]+)", caplog.text).groups())
    assert before == 0 and after > 0.5
    assert fitted["model"]["anchors"] == anchors_of(model) != default
    assert min(fitted["model"]["anchors"]["scales"]) * 320 < 32

    template["hyper_parameters"]["learning_parameters"].update(num_iters=1, batch_size=2, num_workers=0)
    weights = train(template, split_specs(data), tmp_path / "run", pretrained=False)
    checkpoint = load_checkpoint(weights)
    assert checkpoint["template"]["model"]["anchors"] == fitted["model"]["anchors"]
    assert anchors_of(model_from_checkpoint(checkpoint, weights)) == fitted["model"]["anchors"]

    off = train(template, split_specs(data), tmp_path / "off", {"anchors.fit": "false"}, pretrained=False)
    assert "anchors" not in load_checkpoint(off)["template"]["model"]
    # --load-weights builds the model its weights were trained with: the fitted anchors, not refitted
    again = train(template, split_specs(data), tmp_path / "again", {"anchors.fit": "false"}, load_weights=weights)
    assert load_checkpoint(again)["template"]["model"]["anchors"] == fitted["model"]["anchors"]


def test_anchors_are_fitted_when_one_class_lacks_them_though_the_class_mean_is_high(tmp_path, caplog):
    """Dots at recall 0 and discs at recall 1 average 0.5: above min_recall 0.45, but the dots cannot be learnt
    without anchors (BCCD's platelets at 0.89 beside red and white cells at 1.00 averaged 0.96)."""
    splits, schema = load_splits(split_specs(small_boxes_dataset(tmp_path, big=True)))
    template = apply_overrides(resolve_template("ssdlite320_mobilenet_v3_large"),
                               {"anchors.fit": "true", "anchors.min_recall": "0.45"})
    with caplog.at_level(logging.INFO, logger="otxlite"):
        fitted = fit_anchors(build_model(template, 2), template, splits["train"].samples, schema, pretrained=False)
    assert "by class dot 0.00, disc 1.00" in caplog.text
    assert "Re-clustered" in caplog.text and "anchors" in fitted["model"]


def test_small_objects_warn_once_with_median_size_and_what_to_use(tmp_path, caplog):
    data = small_boxes_dataset(tmp_path)
    splits, schema = load_splits(split_specs(data))
    # median 24 px; 320 x 32/24 = 427 -> 448 and 640 x 32/24 = 853 -> 864, rounded up to multiples of 32.
    # torchvision's MobileNetV3 FPN reads stride 32 only: a larger input alone does not give such objects anchors.
    coarse = "its finest features are at stride 32, too coarse for them: fasterrcnn_mobilenet_v3_large_stride16_fpn"
    for template_id, size, advice, not_advice in (
            ("ssdlite320_mobilenet_v3_large", 320, "use one that takes min_size, such as "
                                                   "fasterrcnn_mobilenet_v3_large_stride16_fpn", "too coarse"),
            ("fasterrcnn_mobilenet_v3_large_320_fpn", 320, "--model.kwargs.min_size 448 --model.kwargs.max_size 864; "
                                                           + coarse, "fixed"),
            ("fasterrcnn_mobilenet_v3_large_stride16_fpn", 320, "--model.kwargs.min_size 448", "too coarse"),
            # stride 32 too, but no instance segmentation template reads stride 16: a detector is no advice
            ("maskrcnn_mobilenet_v3_large_fpn", 320, "--model.kwargs.min_size 448", "too coarse")):
        template = resolve_template(template_id)
        template["model"]["kwargs"].update({"min_size": size, "max_size": 640} if "min_size" in
                                           template["model"]["kwargs"] else {})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="otxlite"):
            warn_small_objects(build_model(template, 1), template, splits["train"].samples, schema)
        assert len(caplog.records) == 1
        assert "median size dot 24 px" in caplog.text and advice in caplog.text and not_advice not in caplog.text


@pytest.mark.parametrize("choice, recipe", [("none", {}), ("flip", {"RandomHorizontalFlip": {"p": 0.5}})])
def test_augmentation_none_and_flip_replace_the_template_recipe(otxlite, tiny_voc, small_template, tmp_path, choice,
                                                                 recipe):
    status, _, err = otxlite("train", small_template("ssdlite320_mobilenet_v3_large"), "--data", tiny_voc,
                             "--no-pretrained", "--output", tmp_path / "run", "--augmentation", choice,
                             "params", "--learning_parameters.num_iters", "1")
    assert status == 0, err
    checkpoint = load_checkpoint(tmp_path / "run" / "weights.pth")
    assert checkpoint["template"]["hyper_parameters"]["augmentation"] == recipe
    assert (tmp_path / "run" / "train_batch.jpg").stat().st_size > 1000


def test_the_last_epochs_train_without_mosaic_and_heavy_geometric_transforms(tiny_voc, small_template, tmp_path,
                                                                               caplog, monkeypatch):
    augmentation = {"Mosaic": {"p": 1.0}, "RandomPhotometricDistort": {"p": 0.5}, "RandomIoUCrop": True,
                    "RandomZoomOut": False, "RandomHorizontalFlip": {"p": 0.5}}
    assert without_heavy(augmentation) == {"RandomPhotometricDistort": {"p": 0.5}, "RandomZoomOut": False,
                                           "RandomHorizontalFlip": {"p": 0.5}}
    assert without_heavy({"RandomHorizontalFlip": {"p": 0.5}, "Mosaic": False}) is None  # nothing to switch off
    template = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    template["hyper_parameters"]["augmentation"] = augmentation
    recipes, make_loader = [], otxlite.engine.train.make_loader

    def spy(*args, pipeline=None, **kwargs):
        if pipeline is not None:
            recipes.append([type(step).__name__ for step in pipeline.steps])
        return make_loader(*args, pipeline=pipeline, **kwargs)

    monkeypatch.setattr(otxlite.engine.train, "make_loader", spy)
    with caplog.at_level(logging.INFO, logger="otxlite"):
        train(template, split_specs(tiny_voc), tmp_path / "run", {"learning_parameters.num_iters": "4",
              "learning_parameters.close_mosaic_share": "0.5"}, pretrained=False)
    closing = [r.getMessage() for r in caplog.records if "heavy geometric transforms off" in r.getMessage()]
    assert closing == ["Epoch 3 on: Mosaic and the heavy geometric transforms off (close_mosaic_share 0.5)."]
    assert recipes == [["Mosaic", "RandomPhotometricDistort", "RandomIoUCrop", "RandomHorizontalFlip"],
                       ["RandomPhotometricDistort", "RandomHorizontalFlip"]]
