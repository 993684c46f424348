"""`otxlite export`: weights.pth -> model.onnx and OpenVINO IR, self-describing, same detections."""

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from unittest import mock

import torch
import torchvision

from otxlite import __version__
from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_weights, make_folder, write_atomic, write_json
from otxlite.core.labels import LabelSchema
from otxlite.core.tasks import MASK_OUTPUT, task_of
from otxlite.models.build import input_size, model_from_checkpoint
from otxlite.models.quantization import where_without_list
from otxlite.models.saliency import SALIENCY, recorded_saliency
from otxlite.models.tiling import settings_of

log = logging.getLogger("otxlite")
OPSET = 17  # RoiAlign with aligned=True needs 16 or more
FORMATS = ("onnx", "openvino")


class ExportWrapper(torch.nn.Module):
    """[1, 3, H, W] RGB in 0..1 -> the task's outputs: boxes [N, 4] in the image's pixels, scores [N], labels [N],
    and for instance segmentation masks [N, 1, 28, 28] (each box's mask probabilities, not pasted: MASK_OUTPUT);
    with explain, then saliency [classes, h, w] (otxlite.models.saliency's maps, from the same forward pass).

    Resizing, normalisation, box decoding and NMS are the torchvision model's own, inside the graph.
    """

    def __init__(self, model, outputs, explain=False):
        super().__init__()
        self.model, self.outputs, self.explain = model, outputs, explain

    def forward(self, image):
        with recorded_saliency(self.model) if self.explain else contextlib.nullcontext() as saliency:
            output = self.model([image[0]])[0]
            maps = (saliency()[0],) if self.explain else ()
        return tuple(output[name] for name in self.outputs) + maps


def model_metadata(checkpoint, model):
    """What a lone model file needs to describe itself, as strings."""
    return {"otxlite_version": __version__, "template_id": checkpoint["template"]["id"],
            "template": json.dumps(checkpoint["template"]), "labels": json.dumps(checkpoint["labels"]),
            "confidence_threshold": str(checkpoint["confidence_threshold"]),
            "input_size": json.dumps(input_size(model.transform)),
            **({"mask_output": MASK_OUTPUT} if task_of(checkpoint["labels"]).masks else {})}


def export(weights, output, formats=FORMATS, precision="FP32", explain=False):
    """Export a weights.pth (or a quantization-aware-trained weights_int8.pth) to output/model.onnx and/or
    output/openvino.xml (+ .bin); returns the paths. explain: the models also output saliency maps (SALIENCY)."""
    weights = Path(weights)
    checkpoint = load_weights(weights)
    LabelSchema.read(weights, expected=checkpoint["labels"])
    if precision not in ("FP32", "FP16"):
        raise OtxliteError(f"--precision {precision}: use FP32 or FP16.")
    return export_model(model_from_checkpoint(checkpoint, weights), checkpoint, output, formats, precision, explain)


def export_model(model, checkpoint, output, formats=FORMATS, precision="FP32", explain=False):
    """Export model, built from checkpoint (or quantized from it, with checkpoint["quantization"]), to output.

    A quantized model becomes an INT8 IR: its NNCF FakeQuantize nodes are OpenVINO operations, which ONNX
    Runtime does not have, so it gets no model.onnx.
    """
    output = Path(output)
    if "quantization" in checkpoint:
        if "openvino" not in formats:
            raise OtxliteError("A quantization-aware-trained model exports to OpenVINO IR only (its FakeQuantize "
                               "operations are OpenVINO's). Use --format openvino or all.")
        formats, precision = ("openvino",), "INT8"
    make_folder(output)
    schema = checkpoint["labels"]
    outputs = task_of(schema).outputs
    metadata = model_metadata(checkpoint, model)
    onnx_path = output / "model.onnx"
    log.info("Exporting %s to ONNX (opset %d)%s", checkpoint["template"]["id"], OPSET,
             " with its saliency maps as a last output" if explain else "")
    export_onnx(ExportWrapper(model, outputs, explain).eval(), onnx_path, metadata,
                outputs + ((SALIENCY,) if explain else ()))
    written = [onnx_path]
    if "openvino" in formats:
        written.append(export_openvino(onnx_path, output / "openvino.xml", metadata, precision))
    if "onnx" not in formats:
        onnx_path.unlink()
        written.remove(onnx_path)
    LabelSchema.of(schema).write(output)
    write_json(output / "config.json", {
        "template_id": checkpoint["template"]["id"], "architecture": checkpoint["template"]["model"]["architecture"],
        "input_size": json.loads(metadata["input_size"]), "mean_std": "inside the model",
        "confidence_threshold": checkpoint["confidence_threshold"], "precision": precision,
        "tiling": settings_of(checkpoint["template"]),
        "openvino_inference_precision": "f32 (otxlite sets INFERENCE_PRECISION_HINT; the CPU plugin's default is "
                                        "bf16 on CPUs with AMX)",
        "otxlite_version": __version__})
    for path in written:
        log.info("Wrote %s", path)
    return written


def batched_nms_without_branch(boxes, scores, idxs, iou_threshold):
    """torchvision's batched NMS (boxes offset per class), without its Python branch for empty input.

    Traced, torchvision's version becomes an ONNX If node, and NNCF crashes collecting statistics inside
    If bodies. Padding with a 0 keeps max() defined on no boxes; boxes are clipped to the image (>= 0)
    before every NMS in torchvision's detectors, so the offsets are unchanged.
    """
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


def decode_without_branch(self, rel_codes, boxes):
    """torchvision's BoxCoder.decode without its Python branch on the number of boxes.

    Traced on an image where the model proposes nothing (a well-trained detector on the random export input:
    every objectness under rpn_score_thresh), torchvision's version skips its reshape to [boxes, classes, 4],
    and the graph then breaks on every image with proposals (ONNX Runtime: "cannot reshape {150,15} to
    {-1,4}"). rel_codes is [boxes, 4 x classes] in every torchvision caller, so the shapes are known.
    """
    concat_boxes = torch.cat(boxes, dim=0)
    pred_boxes = self.decode_single(rel_codes, concat_boxes)
    return pred_boxes.reshape(concat_boxes.shape[0], rel_codes.shape[-1] // 4, 4)


def masks_per_box(masks, boxes, img_shape, padding=1):
    """In place of torchvision's paste_masks_in_image: the masks as they are, [N, 1, 28, 28] (MASK_OUTPUT)."""
    return masks


def export_onnx(model, path, metadata, outputs):
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(), mock.patch(
            "torchvision.models.detection.transform.paste_masks_in_image", masks_per_box), mock.patch(
            "torchvision.ops.boxes._batched_nms_coordinate_trick", batched_nms_without_branch), mock.patch(
            "torchvision.models.detection._utils.BoxCoder.decode", decode_without_branch), mock.patch(
            "torch.where", where_without_list):
        warnings.simplefilter("ignore")  # torchvision's tracer warnings are expected and harmless here
        torch.onnx.export(model, (torch.rand(1, 3, 480, 640),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=list(outputs),
                          dynamic_axes={"image": {2: "height", 3: "width"},
                                        **{name: {0: "detections"} if name != SALIENCY else
                                           {1: "map_height", 2: "map_width"} for name in outputs}})
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    write_atomic(path, lambda f: f.write(proto.SerializeToString()))


def export_openvino(onnx_path, xml_path, metadata, precision):
    """Convert the ONNX file to IR, with the metadata in its rt_info."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key, value in {**metadata, "precision": precision}.items():
        model.set_rt_info(value, ["model_info", key])
    return save_openvino(model, xml_path, compress_to_fp16=precision == "FP16")


def save_openvino(model, xml_path, compress_to_fp16=False):
    """Save an IR under temporary names, then rename (.bin first), so a killed run leaves no half model."""
    import openvino as ov

    tmp_xml = xml_path.with_name(f".{xml_path.stem}.tmp.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
    os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    os.replace(tmp_xml, xml_path)
    return xml_path
