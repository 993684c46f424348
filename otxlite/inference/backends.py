"""One predictor interface over every model file: RGB images in, detections (and instance masks) in image
pixels out."""

import ctypes
import json
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from otxlite.core.errors import ArgumentError, ModelFileError
from otxlite.core.files import load_weights
from otxlite.core.labels import LabelSchema
from otxlite.core.tasks import MASK_OUTPUT, as_detections, task_of
from otxlite.models.build import input_size
from otxlite.models.saliency import SALIENCY, recorded_saliency
from otxlite.models.tiling import with_tiling

METADATA_KEYS = ("labels", "confidence_threshold", "template")  # what otxlite export embeds and needs back
OPTIONAL_METADATA_KEYS = ("mask_output", "input_size")  # for some tasks only, or from later versions


class TorchPredictor:
    """A torchvision detector (from weights.pth, or one being trained).

    Only images of one size share a forward pass: torchvision pads a batch to its largest image, and the
    padding changes the features, so mixed sizes would give other detections than ONNX or OpenVINO
    (which see one image at a time) and other detections depending on batch composition.
    """

    def __init__(self, model, schema, confidence_threshold, template, device, explain=False):
        self.model, self.schema, self.template, self.device = model.eval().to(device), schema, template, device
        self.confidence_threshold, self.explain = confidence_threshold, explain
        self.input_size = input_size(model.transform)

    @torch.inference_mode()
    def __call__(self, images):
        """images: HxWx3 uint8 RGB arrays -> [{'boxes' [N, 4] xyxy, 'scores' [N], 'labels' [N] (schema ids),
        for tasks with masks 'rles' [N] (COCO RLE), and with explain 'saliency' [classes, h, w]}]."""
        results = [None] * len(images)
        for indices in same_size_groups(images):
            tensors = [torch.tensor(images[i]).permute(2, 0, 1).to(self.device).float().div_(255) for i in indices]
            with recorded_saliency(self.model) if self.explain else nullcontext() as saliency:
                outputs = self.model(tensors)
                maps = saliency() if self.explain else [None] * len(indices)
            for i, output, image_maps in zip(indices, outputs, maps):
                results[i] = as_detections({k: v.float().cpu().numpy() for k, v in output.items()})
                if self.explain:
                    results[i]["saliency"] = image_maps.float().cpu().numpy()
        return results


def same_size_groups(images):
    """Indices of images grouped by shape, groups in order of first appearance."""
    groups = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("--device cuda: no CUDA GPU is visible to PyTorch. Use --device cpu or auto.")
    return torch.device(name)


class ExportedPredictor:
    """Shared by exported models: metadata -> schema/threshold/template; HWC uint8 -> [1, 3, H, W] 0..1."""

    def __init__(self, path, metadata, device, output_names, explain=False):
        missing = [k for k in METADATA_KEYS if k not in metadata]
        if missing:
            raise ModelFileError(f"{path}: not an otxlite export (no {', '.join(missing)} in its metadata). "
                               f"Export it with `otxlite export`.")
        embedded = json.loads(metadata["labels"])
        self.schema = LabelSchema.read(path, expected=embedded)
        self.confidence_threshold = float(metadata["confidence_threshold"])
        self.template = json.loads(metadata["template"])
        self.input_size = json.loads(metadata["input_size"]) if "input_size" in metadata else None
        self.device = device
        self.outputs = task_of(self.schema).outputs
        if explain and SALIENCY not in output_names:
            raise ModelFileError(f"{path}: exported without saliency maps. Export the weights.pth with `otxlite "
                                 f"export --explain`, or pass the weights.pth itself.")
        self.explain = explain
        if "masks" in self.outputs and metadata.get("mask_output") != MASK_OUTPUT:
            raise ModelFileError(f"{path}: exported by an earlier otxlite, which pasted the masks inside the model. "
                               f"Export it again with `otxlite export` (masks now leave the model per box).")

    def __call__(self, images):
        return [self.detections(self.run(exported_input(image)), image.shape[:2]) for image in images]

    def detections(self, outputs, image_size):
        """An exported model's outputs (in the task's order, then the saliency maps when it has them) for an image
        of image_size (H, W) as a detections dict."""
        detections = as_detections(dict(zip(self.outputs, outputs)), image_size)
        if self.explain:
            detections["saliency"] = np.asarray(outputs[len(self.outputs)], np.float32)
        return detections


def exported_input(image):
    """HxWx3 uint8 RGB -> the exported models' input: [1, 3, H, W] float32 in 0..1."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32) / 255


class OnnxPredictor(ExportedPredictor):
    """model.onnx in ONNX Runtime: the CUDA provider when the device is a GPU, else the CPU."""

    def __init__(self, path, device, threads=None, explain=False):
        import onnxruntime

        cuda = device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise ModelFileError(f"{path}: not a readable ONNX model ({cause(err)}).") from None
        super().__init__(path, self.session.get_modelmeta().custom_metadata_map, device,
                         [output.name for output in self.session.get_outputs()], explain)

    def run(self, image):
        return self.session.run(None, {"image": image})


class OpenVinoPredictor(ExportedPredictor):
    """openvino.xml on OpenVINO's CPU plugin, computing in f32 unless told otherwise.

    inference_precision None leaves the plugin's default, which is bf16 on CPUs with AMX or AVX512-BF16:
    faster, with scores that differ from PyTorch's in the second or third decimal. throughput=True compiles
    for throughput (several streams) and runs the images of one call as parallel asynchronous requests, which
    this thread starts and waits for: no Python callback runs on OpenVINO's threads.
    """

    def __init__(self, path, device, inference_precision="f32", throughput=False, threads=None, explain=False):
        import openvino

        core = openvino.Core()
        weights = Path(path).with_suffix(".bin")
        if not weights.is_file():
            raise ModelFileError(f"{path}: its weights file {weights} is missing. An OpenVINO IR is the .xml and "
                                 f"the .bin written beside it; copy both.")
        try:
            model = core.read_model(str(path))
        except RuntimeError as err:
            raise ModelFileError(f"{path}: not a readable OpenVINO IR ({cause(err)}).") from None
        metadata = {key: model.get_rt_info(["model_info", key]).astype(str)
                    for key in METADATA_KEYS + OPTIONAL_METADATA_KEYS if model.has_rt_info(["model_info", key])}
        super().__init__(path, metadata, device, [name for output in model.outputs for name in output.get_names()],
                         explain)
        hints = {"INFERENCE_PRECISION_HINT": inference_precision} if inference_precision else {}
        if throughput:
            hints["PERFORMANCE_HINT"] = "THROUGHPUT"
        if threads:
            hints["INFERENCE_NUM_THREADS"] = threads
        with signal_stack_kept():
            self.compiled = core.compile_model(model, "CPU", hints)
            parallel = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") if throughput else 0
            self.requests = [self.compiled.create_infer_request() for _ in range(parallel)] or None

    def run(self, image):
        result = self.compiled([image])
        return [result[output] for output in self.compiled.outputs]

    def __call__(self, images):
        if self.requests is None:  # compiled for throughput, every image goes through the requests: mixing the
            return super().__call__(images)  # compiled model's synchronous calls with them corrupted memory (2026.4)
        results = []
        for start in range(0, len(images), len(self.requests)):
            started = list(zip(self.requests, images[start:start + len(self.requests)]))
            for request, image in started:
                request.start_async([exported_input(image)])
            for request, image in started:
                request.wait()
                results.append(self.detections([request.get_tensor(output).data.copy()
                                                 for output in self.compiled.outputs], image.shape[:2]))
        return results


class SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]  # Linux


@contextmanager
def signal_stack_kept():
    """Give this thread back its alternate signal stack after OpenVINO has compiled a model.

    OpenVINO's CPU plugin (2026.4) gives the thread that first compiles on a Core a signal stack of its own, and
    unmaps it when that Core goes, wherever the thread's signal stack then points. A thread left on an unmapped
    stack dies of SIGSEGV at the next signal it handles (Ctrl-C, a child process ending); one left on a stack
    that was mapped again writes its signal frame over other memory. Once the thread's own stack is back, no
    plugin's stack is ever in use. (One Core kept for the process would avoid the unmapping, but a Core still
    alive when Python exits aborts the process: "terminate called without an active exception".)
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc, own = ctypes.CDLL(None, use_errno=True), SignalStack()
    libc.sigaltstack(None, ctypes.byref(own))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(own), None)


def cause(err):
    """The lines of a runtime's error message that say what is wrong, without its source locations."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from", "Check '", "[ ERROR ]"))
            and not line.endswith(".cpp") and ".cpp:" not in line]
    return " ".join(said or lines[-1:] or [type(err).__name__])


def load_predictor(path, device="auto", throughput=False, threads=None, explain=False):
    """The predictor for a model file, by its suffix; label_schema.json must sit beside it.

    throughput=True: OpenVINO runs a call's images as parallel requests (for batch prediction).
    threads: how many CPU threads the model may use (default: the runtime's choice, every core).
    explain=True: detections carry per-class saliency maps (otxlite.models.saliency): a weights.pth records them, an
    exported model outputs them when `otxlite export --explain` wrote it.
    A model trained with tiling predicts tiled (otxlite.models.tiling), from the settings its template carries.
    """
    from otxlite.models.build import model_from_checkpoint

    path, device = Path(path), pick_device(str(device))
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found.")
    if path.suffix == ".pth":
        if threads:
            torch.set_num_threads(threads)
        checkpoint = load_weights(path)
        schema = LabelSchema.read(path, expected=checkpoint["labels"])
        model = model_from_checkpoint(checkpoint, path)
        return with_tiling(TorchPredictor(model, schema, checkpoint["confidence_threshold"], checkpoint["template"],
                                          device, explain))
    if path.suffix == ".xml":
        return with_tiling(OpenVinoPredictor(path, device, throughput=throughput, threads=threads, explain=explain))
    if path.suffix == ".onnx":
        return with_tiling(OnnxPredictor(path, device, threads, explain))
    raise ModelFileError(f"{path}: unknown model file type '{path.suffix}'. "
                       f"Pass a weights.pth, model.onnx or openvino.xml.")


def loader_images(loader):
    """The images of a loader of (uint8 CHW images, targets) batches, as HxWx3 uint8 arrays, batch by batch."""
    for images, _ in loader:
        yield [np.asarray(image.permute(1, 2, 0)) for image in images]


def predict(predictor, loader):
    """Run predictor over a loader of (uint8 CHW images, targets) batches; one dict per image."""
    return [prediction for images in loader_images(loader) for prediction in predictor(images)]


def latency_ms(predictor, image, runs=20, warmup=3):
    """Median milliseconds of predictor([image]) over runs calls, after warmup calls."""
    for _ in range(warmup):
        predictor([image])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor([image])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def unmatched_detections(detections, others, min_score, box_tolerance=1.0, score_tolerance=1e-3):
    """Detections scoring at least min_score without a partner in others (same label, every box side
    within box_tolerance pixels, score within score_tolerance), each partner used once."""
    used = np.zeros(len(others["scores"]), bool)
    unmatched = []
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"]):
        if score < min_score:
            continue
        partners = (~used & (others["labels"] == label) & (np.abs(others["scores"] - score) <= score_tolerance)
                    & (np.abs(others["boxes"] - box).max(axis=1, initial=0) <= box_tolerance))
        if partners.any():
            used[np.flatnonzero(partners)[0]] = True
        else:
            unmatched.append((box.tolist(), float(score), int(label)))
    return unmatched
