"""Building torchvision detection and instance-segmentation models from templates, and loading their weights."""

import difflib
import importlib
import inspect
from dataclasses import dataclass
from functools import partial

import torch
import torch.onnx.operators
import torchvision
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import label_names

# Where each model family keeps the layers whose shape depends on the number of classes (Mask R-CNN: two).
CLASS_HEAD_PATHS = ("roi_heads.box_predictor", "roi_heads.mask_predictor", "head.classification_head")
# Buffers that torchvision's FrozenBatchNorm2d (used with pretrained backbones) lacks; harmless when absent.
OPTIONAL_KEYS = ("num_batches_tracked",)


def resolve_builder(architecture):
    """A torchvision.models.detection builder by name, or any 'module:function'."""
    if ":" in architecture:
        module_name, _, function_name = architecture.partition(":")
        try:
            return getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as err:
            raise OtxliteError(f"Cannot import model builder '{architecture}': {err}.") from None
    builder = getattr(torchvision.models.detection, architecture, None)
    if not callable(builder):
        raise OtxliteError(f"'{architecture}' is not a torchvision.models.detection builder.")
    return builder


def download_weights(name):
    """Fetch torchvision weights into the TORCH_HOME cache, or explain how to do without them."""
    weights = torchvision.models.get_weight(name)
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:
        cache = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise OtxliteError(
            f"Cannot download pretrained weights {name} from {weights.url} ({err}). "
            f"Pass --no-pretrained to start from random weights, or --load-weights FILE, "
            f"or put the file at {cache}."
        ) from None


class ExactResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, with the resized image size computed in integers.

    torchvision computes it as floor(side x scale): in double precision when PyTorch runs the model, but in
    float32 inside an exported graph, where 320/400 becomes 0.79999995. So a 720x400 image was resized to
    576x320 by PyTorch and to 575x319 by ONNX Runtime and OpenVINO, and every detection differed (any image
    whose shorter side divides the input size evenly: 200, 400, 800 px at min_size 320). floor(side x num / den)
    in integers is the same number on every backend.
    """

    def resize(self, image, target=None):
        if self.fixed_size is not None or (self.training and self._skip_resize):
            return super().resize(image, target)
        height, width = image.shape[-2:]
        min_size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        size = exact_resized_size(image, min_size, self.max_size)
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (height, width), image.shape[-2:])
        if "masks" in target:
            target["masks"] = torch.nn.functional.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return image, target


def exact_resized_size(image, min_size, max_size):
    """[height, width] with the shorter side scaled to min_size, unless the longer would pass max_size, rounded
    down: integer arithmetic on shape tensors, so an exported graph computes it the same way (and per image)."""
    shape = torch.onnx.operators.shape_as_tensor(image)[-2:] if torchvision._is_tracing() else \
        torch.tensor(image.shape[-2:])
    resized = resized_shape(shape, min_size, max_size)
    if torchvision._is_tracing():
        return [resized[0], resized[1]]
    return [int(resized[0]), int(resized[1])]


def resized_shape(shape, min_size, max_size):
    short, long = shape.min(), shape.max()
    by_short = min_size * long <= max_size * short
    numerator = torch.where(by_short, torch.tensor(min_size), torch.tensor(max_size))
    return shape * numerator // torch.where(by_short, short, long)


@dataclass(frozen=True)
class InputSize:
    """How a detector resizes an image before its backbone: to a fixed size (SSD), or the shorter side to
    min_size with the longer at most max_size (R-CNN, RetinaNet, FCOS)."""

    min_size: int
    max_size: int
    fixed: tuple | None = None

    @classmethod
    def of(cls, model):
        transform = model.transform
        return cls(transform.min_size[-1], transform.max_size,
                   tuple(transform.fixed_size) if transform.fixed_size else None)

    def resized(self, height, width):
        if self.fixed:
            return self.fixed
        return tuple(int(v) for v in resized_shape(torch.tensor([height, width]), self.min_size, self.max_size))

    def factors(self, height, width):
        """(y, x) scale factors from an image of height x width to the model's input."""
        resized_height, resized_width = self.resized(height, width)
        return resized_height / height, resized_width / width

    @property
    def side(self):
        return min(self.fixed) if self.fixed else self.min_size

    def __str__(self):
        return f"{self.fixed[1]}x{self.fixed[0]}" if self.fixed else f"min_size {self.min_size}, max_size {self.max_size}"


def input_size(transform):
    """A detector transform's resizing as export metadata and `otxlite serve` report it."""
    fixed = getattr(transform, "fixed_size", None)
    if fixed:
        return {"fixed_size": list(fixed)}
    return {"min_size": int(transform.min_size[0]), "max_size": int(transform.max_size)}


def anchor_owner(model):
    """(module, attribute) holding the model's anchor generator, or None for an anchor-free model (FCOS)."""
    if isinstance(model, FCOS):
        return None
    for owner in (getattr(model, "rpn", None), model):
        if isinstance(getattr(owner, "anchor_generator", None), (AnchorGenerator, DefaultBoxGenerator)):
            return owner, "anchor_generator"
    return None


def anchors_of(model):
    """The model's anchor settings as a template stores them: {sizes, aspect_ratios} (AnchorGenerator, in
    pixels of the model's input) or {scales, aspect_ratios} (SSD's DefaultBoxGenerator, relative to it)."""
    owner, name = anchor_owner(model)
    generator = getattr(owner, name)
    if isinstance(generator, DefaultBoxGenerator):
        return {"scales": [float(s) for s in generator.scales],
                "aspect_ratios": [[float(r) for r in level] for level in generator.aspect_ratios]}
    return {"sizes": [[float(s) for s in level] for level in generator.sizes],
            "aspect_ratios": [[float(r) for r in level] for level in generator.aspect_ratios]}


def set_anchors(model, anchors):
    """Replace the model's anchor generator by one with these settings and as many anchors per location."""
    found = anchor_owner(model)
    if found is None:
        raise OtxliteError(f"model.anchors: {type(model).__name__} has no anchors to set. Remove model.anchors.")
    owner, name = found
    old = getattr(owner, name)
    try:
        if isinstance(old, DefaultBoxGenerator):
            new = DefaultBoxGenerator(anchors["aspect_ratios"], scales=anchors["scales"], steps=old.steps,
                                      clip=old.clip)
        else:
            new = AnchorGenerator(tuple(map(tuple, anchors["sizes"])), tuple(map(tuple, anchors["aspect_ratios"])))
    except (KeyError, TypeError, ValueError) as err:
        raise OtxliteError(f"model.anchors {anchors}: not settings for {type(old).__name__} ({err}).") from None
    if new.num_anchors_per_location() != old.num_anchors_per_location():
        raise OtxliteError(f"model.anchors {anchors}: gives {new.num_anchors_per_location()} anchors per location "
                           f"where the model's head predicts {old.num_anchors_per_location()}.")
    setattr(owner, name, new)


def build_model(template, num_classes, pretrained=False):
    """The template's detector with num_classes foreground classes (torchvision adds background).

    With pretrained, the COCO weights the template names are loaded and the class head
    is re-initialised; a template without COCO weights gets its ImageNet backbone weights.
    Its transform resizes with ExactResizeTransform; anchors the template stores (fitted by train) replace the
    builder's.
    """
    spec = template["model"]
    builder = resolve_builder(spec["architecture"])
    kwargs = dict(spec.get("kwargs") or {})
    try:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs)
    except TypeError as err:
        raise OtxliteError(f"model.kwargs {kwargs}: {spec['architecture']} does not take them ({err}). "
                           f"Check the template's model.kwargs and params --model.kwargs.") from None
    refuse_unknown_arguments(kwargs, builder, model, spec["architecture"])
    if pretrained:
        model = pretrained_model(template, builder, kwargs, model, num_classes)
    if type(model.transform) is GeneralizedRCNNTransform:
        model.transform.__class__ = ExactResizeTransform
    if spec.get("anchors"):
        set_anchors(model, spec["anchors"])
    return model


def refuse_unknown_arguments(kwargs, builder, model, architecture):
    """torchvision's builders pass unknown keyword arguments down to the resizing transform, which ignores them:
    a misspelt model.kwargs key would change nothing, silently. Each key must be a named parameter of the builder,
    of the model's class or of its transform."""
    accepted = set()
    for function in (builder, type(model).__init__, type(model.transform).__init__):
        accepted |= {name for name, parameter in inspect.signature(function).parameters.items()
                     if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}
    accepted -= {"self", "weights", "weights_backbone", "num_classes", "backbone", "progress"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        from otxlite.core.errors import TemplateError

        close = [name for key in unknown for name in difflib.get_close_matches(key, sorted(accepted), n=1)]
        raise TemplateError(f"model.kwargs {', '.join(unknown)}: not an argument of {architecture}"
                            f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. It accepts: "
                            f"{', '.join(sorted(accepted))}.")


def pretrained_model(template, builder, kwargs, model, num_classes):
    """The template's pretrained detector, with model's (fresh) class head."""
    spec = template["model"]
    if spec.get("weights"):
        download_weights(spec["weights"])
        pretrained = builder(weights=spec["weights"], **kwargs)
        for head_path in class_head_paths(model):
            set_submodule(pretrained, head_path, model.get_submodule(head_path))
        return pretrained
    if spec.get("weights_backbone"):
        from otxlite.models.backbones import is_offline

        if not is_offline(spec["weights_backbone"]):  # offline ones come with a package: the builder loads them
            download_weights(spec["weights_backbone"])
        return builder(weights=None, weights_backbone=spec["weights_backbone"], num_classes=num_classes + 1, **kwargs)
    raise OtxliteError(f"Template {template['id']} names no pretrained weights; pass --no-pretrained.")


def class_head_paths(model):
    """The model's class heads (those of CLASS_HEAD_PATHS it has)."""
    paths = []
    for path in CLASS_HEAD_PATHS:
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        paths.append(path)
    if not paths:
        raise OtxliteError(f"{type(model).__name__} has none of the class heads otxlite knows: {CLASS_HEAD_PATHS}.")
    return tuple(paths)


def set_submodule(model, path, module):
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)


def load_state(model, state_dict, source, keep_class_head=True):
    """Load state_dict into model; without keep_class_head, the class heads keep their fresh weights.

    Any other missing or mismatching tensor is an error naming source.
    """
    heads = tuple(f"{path}." for path in class_head_paths(model))
    if not keep_class_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state_dict.items() if k not in mismatched}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(OPTIONAL_KEYS)]
    if not keep_class_head:
        missing = [k for k in missing if not k.startswith(heads)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(OPTIONAL_KEYS)]
    if mismatched or missing or unexpected:
        problems = mismatched[:3] + missing[:3] + unexpected[:3]
        raise OtxliteError(
            f"{source}: weights do not fit this model ({len(mismatched)} of other shape, {len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {', '.join(problems)}). Was it trained from another template?"
        )


def grown_class_heads(state_dict, model, old_classes):
    """state_dict (of a model of old_classes classes) with its class heads widened to model's classes, which are
    the old ones followed by new ones: each old class keeps its rows (its score, and for Faster R-CNN its box
    regression) in every head, and the new classes' rows keep model's fresh initialisation."""
    heads = tuple(f"{path}." for path in class_head_paths(model))
    own, grown = model.state_dict(), dict(state_dict)
    old_count = old_classes + 1  # with the background
    for key, old in state_dict.items():
        fresh = own.get(key)
        if not key.startswith(heads) or fresh is None or fresh.shape == old.shape or old.dim() == 0:
            continue
        groups = old.shape[0] // old_count  # anchors a location (a score per class each), or 4 box coordinates
        if not groups or old.shape[0] % old_count or fresh.shape[0] % groups or fresh.shape[1:] != old.shape[1:]:
            continue  # not a per-class layout: load_state names it
        new_count = fresh.shape[0] // groups
        wider = fresh.clone()
        if key.rsplit(".", 2)[-2] == "bbox_pred":  # Faster R-CNN: class-major, 4 coordinates each
            wider.view(new_count, groups, *old.shape[1:])[:old_count] = old.view(old_count, groups, *old.shape[1:])
        else:  # RetinaNet, SSD, FCOS, Mask R-CNN: anchor-major, a score per class each
            wider.view(groups, new_count, *old.shape[1:])[:, :old_count] = old.view(groups, old_count, *old.shape[1:])
        grown[key] = wider
    return grown


def model_from_checkpoint(checkpoint, source):
    """The detector stored in an otxlite checkpoint, in eval mode: quantized (with NNCF's fake quantizers) when
    it is a weights_int8.pth of quantization-aware training."""
    model = build_model(checkpoint["template"], len(label_names(checkpoint["labels"])))
    if "quantization" in checkpoint:
        from otxlite.models.quantization import rebuild_quantized

        model = rebuild_quantized(model, checkpoint["quantization"])
    load_state(model, checkpoint["model"], source)
    return model.eval()


def fasterrcnn_mobilenet_v2(num_classes, weights=None, weights_backbone=None,
                            anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), **kwargs):
    """Faster R-CNN on MobileNetV2 features, as in torchvision's detection fine-tuning tutorial.

    An example of a custom builder: templates reach it as 'otxlite.models.build:fasterrcnn_mobilenet_v2'.
    """
    if weights is not None:
        raise OtxliteError("fasterrcnn_mobilenet_v2 has no COCO weights; only weights_backbone can be pretrained.")
    backbone = torchvision.models.mobilenet_v2(weights=weights_backbone).features
    backbone.out_channels = 1280
    anchor_generator = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchor_generator,
                      box_roi_pool=roi_pool, **kwargs)


def mobilenet_v3_large_fpn(weights_backbone, trainable_backbone_layers, returned_layers):
    """MobileNetV3-Large FPN features as torchvision's detection builders make them, with returned_layers
    choosing the stages the FPN reads (torchvision's [4, 5] are both at stride 32; 3 adds stride 16, 2 stride 8).
    """
    backbone = torchvision.models.mobilenet_v3_large(weights=weights_backbone,
                                                     norm_layer=torchvision.ops.misc.FrozenBatchNorm2d
                                                     if weights_backbone else torch.nn.BatchNorm2d)
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if weights_backbone else 6  # torchvision's defaults
    try:
        return _mobilenet_extractor(backbone, True, trainable_backbone_layers, returned_layers=list(returned_layers))
    except ValueError as err:
        raise OtxliteError(f"model.kwargs.returned_layers {returned_layers}: {err}.") from None


def mobilenet_v3_large_fpn_detector(detector, weights, weights_backbone, trainable_backbone_layers, returned_layers,
                                    kwargs):
    """detector (FasterRCNN or MaskRCNN) on mobilenet_v3_large_fpn features, with torchvision's anchors and RPN
    settings for fasterrcnn_mobilenet_v3_large_fpn on every level."""
    if weights is not None:
        raise OtxliteError(f"otxlite's {detector.__name__} on MobileNetV3-Large FPN has no COCO weights; only "
                           f"weights_backbone can be pretrained.")
    backbone = mobilenet_v3_large_fpn(weights_backbone, trainable_backbone_layers, returned_layers)
    anchor_sizes = ((32, 64, 128, 256, 512),) * (len(returned_layers) + 1)
    aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    defaults = {"min_size": 800, "max_size": 1333, "rpn_score_thresh": 0.05}
    return detector(backbone, rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios),
                    **{**defaults, **kwargs})


def fasterrcnn_mobilenet_v3_large_fpn(num_classes, weights=None, weights_backbone=None,
                                      trainable_backbone_layers=None, returned_layers=(4, 5), **kwargs):
    """torchvision's fasterrcnn_mobilenet_v3_large_fpn, with the FPN's stages chosen by returned_layers.

    Templates reach it as 'otxlite.models.build:fasterrcnn_mobilenet_v3_large_fpn'.
    """
    return mobilenet_v3_large_fpn_detector(FasterRCNN, weights, weights_backbone, trainable_backbone_layers,
                                           returned_layers, {"num_classes": num_classes, **kwargs})


def maskrcnn_mobilenet_v3_large_fpn(num_classes, weights=None, weights_backbone=None, trainable_backbone_layers=None,
                                    returned_layers=(4, 5), **kwargs):
    """Mask R-CNN on MobileNetV3-Large FPN features, sized for CPUs: torchvision's
    fasterrcnn_mobilenet_v3_large_fpn (its backbone, anchors and RPN settings) with a mask head.

    Templates reach it as 'otxlite.models.build:maskrcnn_mobilenet_v3_large_fpn'.
    """
    return mobilenet_v3_large_fpn_detector(MaskRCNN, weights, weights_backbone, trainable_backbone_layers,
                                           returned_layers, {"num_classes": num_classes, **kwargs})


class FeaturePyramid(torch.nn.Module):
    """A feature pyramid (torchvision's FeaturePyramidNetwork, with a max-pooled level on top) over a timm
    features_only backbone: the backbone torchvision's detectors expect ({name: map}, out_channels). Its
    convolutions are followed by GroupNorm, which works at any batch size: EfficientNet's features (linear
    projections, standard deviation 3-8) made the heads' losses diverge without it."""

    def __init__(self, body, out_channels):
        super().__init__()
        self.body, self.out_channels = body, out_channels
        self.fpn = torchvision.ops.FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool(),
            norm_layer=lambda channels: torch.nn.GroupNorm(32, channels))

    def forward(self, images):
        return self.fpn({str(level): features for level, features in enumerate(self.body(images))})


def efficientnet_lite_fpn(variant, weights_backbone, trainable_stages, out_channels):
    """EfficientNet-Lite features at strides 8, 16 and 32 under a feature pyramid. With ImageNet weights
    (weights_backbone, offline: otxlite.models.backbones), BatchNorm is frozen (batches of 2-8 images cannot estimate
    it) and the stem and the stages before the last trainable_stages (of 7) keep their weights."""
    from timm.layers import freeze_batch_norm_2d

    from otxlite.models.backbones import efficientnet_lite, is_offline

    if weights_backbone is not None and weights_backbone != variant:
        raise OtxliteError(f"weights_backbone {weights_backbone} does not fit model.kwargs.variant {variant}: name "
                           f"the same EfficientNet-Lite.")
    if weights_backbone is not None and not is_offline(weights_backbone):
        raise OtxliteError(f"weights_backbone {weights_backbone}: EfficientNet-Lite weights come with a package; "
                           f"name one of otxlite.models.backbones.OFFLINE_WEIGHTS.")
    body = efficientnet_lite(variant, pretrained=weights_backbone is not None)
    if weights_backbone is not None:
        body = freeze_batch_norm_2d(body)
        trainable = 5 if trainable_stages is None else trainable_stages
        if not 0 <= trainable <= len(body.blocks):
            raise OtxliteError(f"model.kwargs.trainable_stages {trainable}: give 0 to {len(body.blocks)}.")
        frozen = [body.conv_stem, body.bn1, *body.blocks[:len(body.blocks) - trainable]]
        for parameter in (p for module in frozen for p in module.parameters()):
            parameter.requires_grad_(False)
    return FeaturePyramid(body, out_channels)


def efficientnet_lite_fpn_detector(detector, num_classes, weights, weights_backbone, variant, trainable_stages,
                                   fpn_channels, kwargs):
    """detector (FasterRCNN, MaskRCNN, RetinaNet or FCOS) on efficientnet_lite_fpn features, with the anchors and
    head pyramid_heads gives it, and the backbone's own normalisation."""
    if weights is not None:
        raise OtxliteError(f"otxlite's {detector.__name__} on EfficientNet-Lite has no COCO weights; only "
                           f"weights_backbone (ImageNet) can be pretrained.")
    from otxlite.models.backbones import IMAGE_MEAN, IMAGE_STD

    backbone = efficientnet_lite_fpn(variant, weights_backbone, trainable_stages, fpn_channels)
    defaults = {"min_size": 416, "max_size": 704, "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD}
    return detector(backbone, num_classes=num_classes, **pyramid_heads(detector, fpn_channels, num_classes),
                    **{**defaults, **kwargs})


def pyramid_heads(detector, channels, num_classes):
    """The anchors (and head) each family wants on a four-level pyramid (strides 8 to 64), which train re-fits to
    the data where there are anchors: two-stage, one size a level (32 to 256 px); RetinaNet, torchvision's three
    octave scales a level with its v2 head (GroupNorm, GIoU loss); FCOS, one point a location (the stride)."""
    if detector is FCOS:
        return {"anchor_generator": AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)}
    if detector is RetinaNet:
        sizes = tuple((size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))) for size in (32, 64, 128, 256))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 4)
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(torch.nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        return {"anchor_generator": anchors, "head": head}
    return {"rpn_anchor_generator": AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)}


def efficientnet_lite_fpn_builder(detector):
    """A template builder of detector on an EfficientNet-Lite feature pyramid, whose ImageNet weights work offline."""

    def build(num_classes, weights=None, weights_backbone=None, variant="efficientnet_lite0", trainable_stages=None,
              fpn_channels=128, **kwargs):
        return efficientnet_lite_fpn_detector(detector, num_classes, weights, weights_backbone, variant,
                                              trainable_stages, fpn_channels, kwargs)

    build.__name__ = build.__qualname__ = f"{detector.__name__.lower()}_efficientnet_lite_fpn"
    build.__doc__ = (f"{detector.__name__} on an EfficientNet-Lite feature pyramid, whose ImageNet weights work "
                     f"offline. Templates reach it as 'otxlite.models.build:{build.__name__}'.")
    return build


fasterrcnn_efficientnet_lite_fpn = efficientnet_lite_fpn_builder(FasterRCNN)
maskrcnn_efficientnet_lite_fpn = efficientnet_lite_fpn_builder(MaskRCNN)
retinanet_efficientnet_lite_fpn = efficientnet_lite_fpn_builder(RetinaNet)
fcos_efficientnet_lite_fpn = efficientnet_lite_fpn_builder(FCOS)
