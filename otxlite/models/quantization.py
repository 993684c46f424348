"""What NNCF quantizes in a detector, shared by post-training quantization of an IR and quantization-aware training
of a PyTorch model, and quantized PyTorch models built from and rebuilt into checkpoints."""

import json
import logging
import os
import re

import torch
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.ssd import SSD
from torchvision.ops import poolers

from otxlite.core.errors import OtxliteError

log = logging.getLogger("otxlite")
# What NNCF may quantize: the layers of the detector's feature modules (backbone with FPN, RPN head, box head,
# class/box heads, mask head), named "<module path>/..." (PyTorch) or "/model/<module path>/..." (exported graph).
# The rest (resize, anchors, box decoding, NMS, RoIAlign's arithmetic) stays in float: measured with OpenVINO's
# performance counters, quantizing it all made MobileNetV3-320 slower than FP32, and quantizing only convolutions
# and fully connected layers left FakeQuantize and Reorder nodes between int8 layers and float residual Adds.
QUANTIZED_MODULES = ("backbone", "rpn/head", "roi_heads/box_head", "roi_heads/box_predictor", "roi_heads/mask_head",
                     "roi_heads/mask_predictor", "head")
OUTSIDE_QUANTIZED_MODULES = rf"^(?!({'|'.join(QUANTIZED_MODULES)})/).*"
OUTSIDE_QUANTIZED_MODULES_IN_EXPORT = rf"^(?!/model/({'|'.join(QUANTIZED_MODULES)})/).*"
# What NNCF must not trace in a PyTorch model, per family: the post-processing on indices, shapes and
# dtypes. Traced, Faster R-CNN's fails in training ("'torch.dtype' object has no attribute 'device'") and in
# export ("fake_quantize not implemented for 'Long'"); NNCF's own SSD300 example leaves SSD's out.
UNTRACED = {
    GeneralizedRCNN: (RoIHeads.postprocess_detections, RegionProposalNetwork.filter_proposals, BoxCoder.decode,
                      BoxCoder.encode),
    SSD: (SSD.postprocess_detections,),
    RetinaNet: (RetinaNet.postprocess_detections,),
    FCOS: (FCOS.postprocess_detections,),
}
DEFAULT_SUBSET_SIZE = 300  # calibration images
WEIGHT_RANGE_MARGIN = 1e-3  # see widen_weight_ranges
EXTENSION_LOAD_TIMEOUT = "600"  # seconds; NNCF's C++ extension compiles on first use, over its 60 s default on 2 cores
_untraced = set()


def import_nncf():
    """nncf, quiet (its INFO lists every ignored node), with time to compile its extension on a small machine."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # NNCF's import warns of no CUDA
    import nncf

    nncf.set_log_level(logging.WARNING)
    return nncf


def checked_subset_size(asked, available, spec, tiled):
    """The calibration or training subset size: asked, checked against the available training items (images, or
    with tiling the images and their tiles)."""
    if asked is None:
        return min(DEFAULT_SUBSET_SIZE, available)
    if asked > available:
        items = "training items (images and their tiles)" if tiled else "images"
        raise OtxliteError(f"--subset-size {asked}: the train split ({spec.ann_files}) has only {available} {items}. "
                           f"Pass --subset-size {available} or less, or add training images.")
    return asked


def prepare_for_nncf(model):
    """Leave the post-processing of model's family out of NNCF's tracing (once per process and method), and let
    NNCF see the RoI heads' inputs."""
    from nncf.torch import disable_tracing

    poolers._multiscale_roi_align = multiscale_roi_align_out_of_place

    family = next((family for family in UNTRACED if isinstance(model, family)), None)
    if family is None:
        raise OtxliteError(f"Quantization-aware training does not know {type(model).__name__} models. Use "
                           f"--method ptq, or a template of the Faster/Mask R-CNN, SSD, RetinaNet or FCOS family.")
    for method in UNTRACED[family]:
        if method not in _untraced:
            disable_tracing(method)
            _untraced.add(method)


def quantize_model(model, loader, model_input, preset, subset_size):
    """NNCF's post-training quantization of a PyTorch detector (eval mode), calibrated on model_input(batch) for
    the batches of loader: the start of quantization-aware training."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    prepare_for_nncf(model)
    # Weights in 7 bits in every layer (NNCF's overflow fix; its default covers only the first): on CPUs without
    # VNNI (AVX2), OpenVINO's u8 x s8 kernels saturate pairs of 8-bit products in 16 bits, so the IR then computes
    # something else than the model QAT trained. Measured on three stacked convolutions: IR against a float
    # FakeQuantize reference 0.005 (first layer only), 0.014 (off), 4e-8 (all layers), at an output scale of 0.14.
    quantized = nncf.quantize(model.eval(), nncf.Dataset(loader, model_input),
                              preset=nncf.QuantizationPreset(preset), subset_size=subset_size,
                              ignored_scope=nncf.IgnoredScope(patterns=[OUTSIDE_QUANTIZED_MODULES], validate=False),
                              advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
    widen_weight_ranges(quantized)
    return quantized


def widen_weight_ranges(model):
    """Move each channel's largest weight off a rounding tie. The overflow fix's doubled range puts it at exactly
    63.5 steps, which PyTorch rounds to 64 (half to even) and OpenVINO's int8 weights to 63: one step on each
    channel's largest weight, and the IR's first layer then differed from the QAT model in 31 % of its
    activations (up to 3 steps). WEIGHT_RANGE_MARGIN keeps both at 63."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, SymmetricQuantizer) and re.search(r"__1\.\d+$", name):  # input 1: the weight
                module.scale = torch.nn.Parameter(module.scale * (1 + WEIGHT_RANGE_MARGIN))


def quantization_config(model):
    """What rebuilds model's quantizers (nncf.torch.get_config) as JSON text, for its checkpoint: NNCF's enums
    would make the checkpoint unreadable with torch.load(weights_only=True)."""
    import nncf.torch

    return json.dumps(nncf.torch.get_config(model))


def rebuild_quantized(model, config):
    """model with the quantizers that config (from quantization_config) describes; load the state_dict after."""
    import_nncf()
    import nncf.torch

    prepare_for_nncf(model)
    return nncf.torch.load_from_config(model, json.loads(config))


def multiscale_roi_align_out_of_place(x_filtered, boxes, output_size, sampling_ratio, scales, mapper):
    """torchvision's _multiscale_roi_align as it runs when traced: the levels' RoIAlign results merged by scatter.

    Run eagerly, torchvision writes them into a torch.zeros tensor in place; NNCF's graph then starts the box and
    mask heads at that constant, finds no path from the image to them, and quantizes neither. The values are the same.
    """
    if len(x_filtered) == 1:
        return MULTISCALE_ROI_ALIGN(x_filtered, boxes, output_size, sampling_ratio, scales, mapper)
    rois, levels = poolers._convert_to_roi_format(boxes), mapper(boxes)
    dtype = x_filtered[0].dtype
    results = [poolers.roi_align(feature, rois[torch.where(levels == level)[0]], output_size=output_size,
                                 spatial_scale=scale, sampling_ratio=sampling_ratio).to(dtype)
               for level, (feature, scale) in enumerate(zip(x_filtered, scales))]
    return poolers._onnx_merge_levels(levels, results)


def where_without_list(condition, *args, **kwargs):
    """torch.where; its one-argument form as a tuple of index columns of torch.nonzero.

    Traced while NNCF's hooks are active, torch.where(condition) returns a list that the ONNX exporter turns into
    a sequence, and torchvision's `torch.where(mask)[0]` then gathers [K, 1, 5] RoIs: OpenVINO refuses the graph
    ("Expected a 2D tensor for the ROIs input"). Columns of nonzero export as plain Gathers with or without NNCF.
    """
    if args or kwargs:
        return TORCH_WHERE(condition, *args, **kwargs)
    indices = torch.nonzero(condition)
    return tuple(indices[:, dim] for dim in range(condition.dim()))


TORCH_WHERE = torch.where
MULTISCALE_ROI_ALIGN = poolers._multiscale_roi_align
