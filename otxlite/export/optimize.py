"""`otxlite optimize`: NNCF INT8 quantization: post-training on an exported OpenVINO IR, or quantization-aware
training on a weights.pth."""

import logging
import random
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from otxlite.core.errors import OtxliteError
from otxlite.core.files import LABEL_SCHEMA, make_folder, read_json, write_json
from otxlite.core.labels import label_names
from otxlite.core.tasks import as_detections, task_of
from otxlite.data.loader import make_loader
from otxlite.data.records import load_split
from otxlite.data.specs import require_splits
from otxlite.engine.evaluate import KEY_PREFIX, coco_map, evaluate, headline_figures
from otxlite.export.exporter import export, export_model, save_openvino
from otxlite.export.qat import WEIGHTS_INT8, quantization_aware_training
from otxlite.inference.backends import exported_input, latency_ms, load_predictor, loader_images, signal_stack_kept
from otxlite.models.quantization import (
    OUTSIDE_QUANTIZED_MODULES_IN_EXPORT,
    QUANTIZED_MODULES,
    checked_subset_size,
    import_nncf,
)
from otxlite.models.tiling import settings_of, training_samples

log = logging.getLogger("otxlite")
QAT_MAX_ACCURACY_DROP = 0.01
LATENCY_RUNS = 20
METHODS = ("ptq", "qat")


def optimize(model_path, specs, output, subset_size=None, preset="mixed", max_accuracy_drop=None, method=None,
             overrides=None, device="auto", resume=False):
    """Quantize model_path to output/openvino.xml in INT8; returns that path.

    method "ptq" (the default for an openvino.xml; a weights.pth is exported first) calibrates the IR on the train
    split; with max_accuracy_drop, NNCF keeps the drop of the task's headline mAP@0.5 (boxes, or masks for instance
    segmentation) on val within it. method "qat" (the default for a weights.pth) quantizes the PyTorch model and
    fine-tunes it on train until that drop on val is within max_accuracy_drop (default 0.01), also writing
    output/weights_int8.pth. Both write label_schema.json, config.json and performance.json (FP32 and INT8 side by
    side).
    """
    model_path, output = Path(model_path), Path(output)
    method = method or ("qat" if model_path.suffix == ".pth" else "ptq")
    if method not in METHODS:
        raise OtxliteError(f"--method {method}: use ptq or qat.")
    if model_path.suffix not in (".pth", ".xml"):
        raise OtxliteError(f"{model_path}: optimize takes an openvino.xml from `otxlite export` or a weights.pth.")
    if method == "qat":
        if model_path.suffix != ".pth":
            raise OtxliteError(f"{model_path}: quantization-aware training trains the PyTorch model. Pass the "
                               f"weights.pth that `otxlite train` wrote, or use --method ptq.")
        return train_quantized(model_path, specs, output, subset_size, preset, max_accuracy_drop, overrides,
                               device, resume)
    if resume or overrides:
        raise OtxliteError("--resume and params belong to quantization-aware training (--method qat).")
    return quantize_ir(model_path, specs, output, subset_size, preset, max_accuracy_drop)


def quantize_ir(model_path, specs, output, subset_size, preset, max_accuracy_drop):
    """Post-training quantization of an IR (or of the IR exported from a weights.pth) with NNCF."""
    nncf = import_nncf()
    import openvino as ov

    require_splits(specs, "train", *(["val"] if max_accuracy_drop is not None else []))
    if model_path.suffix == ".pth":
        model_path = export(model_path, output / "fp32", formats=("openvino",))[0]
    fp32 = load_predictor(model_path, "cpu")
    model = ov.Core().read_model(str(model_path))  # from disk: NNCF fails on a model fresh from convert_model
    precision = ["model_info", "precision"]
    if model.has_rt_info(precision) and model.get_rt_info(precision).astype(str) == "INT8":
        raise OtxliteError(f"{model_path}: already INT8. Pass the FP32 openvino.xml that `otxlite export` wrote.")
    config_path = model_path.with_name("config.json")
    config = read_json(config_path) if config_path.is_file() else {}

    train = load_split(specs["train"], known_classes=label_names(fp32.schema))
    train_samples = training_samples(train.samples, fp32.template)  # with tiling, the tiles the model sees
    subset_size = checked_subset_size(subset_size, len(train_samples), specs["train"],
                                      bool(settings_of(fp32.template)))
    subset = random.Random(0).sample(train_samples, subset_size)
    calibration = nncf.Dataset(decoded_images(subset, fp32.schema), exported_input)
    settings = {"preset": nncf.QuantizationPreset(preset), "subset_size": subset_size,
                "ignored_scope": nncf.IgnoredScope(patterns=[OUTSIDE_QUANTIZED_MODULES_IN_EXPORT], validate=False)}
    log.info("Quantizing %s to INT8: %d calibration images from %s, preset %s", model_path, subset_size,
             specs["train"].ann_files, preset)
    if max_accuracy_drop is None:
        with signal_stack_kept():  # NNCF compiles the model with OpenVINO
            quantized = nncf.quantize(model, calibration, **settings)
    else:
        val = load_split(specs["val"], known_classes=label_names(fp32.schema))
        validation = nncf.Dataset(list(zip(decoded_images(val.samples, fp32.schema), val.samples)))
        validate = validation_map(fp32.schema)
        one_thread = nncf.AdvancedAccuracyRestorerParameters(num_ranking_workers=1)  # NNCF's ranking threads
        with signal_stack_kept():  # would compile models outside the guard, on threads of their own
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, validate, max_drop=max_accuracy_drop,
                advanced_accuracy_restorer_parameters=one_thread, **settings)
        whole_split = [value for count, value in validate.history if count == len(val.samples)]
        log.info("Accuracy control on val: %smAP@0.5 FP32 %.3f, INT8 %.3f (drop bound %g, %d validations)",
                 task_of(fp32.schema).unit, whole_split[0], whole_split[-1], max_accuracy_drop, len(whole_split))

    make_folder(output)
    quantized.set_rt_info("INT8", precision)
    save_openvino(quantized, output / "openvino.xml")
    shutil.copy(model_path.with_name(LABEL_SCHEMA), output / LABEL_SCHEMA)
    return finish(output, model_path, specs, max_accuracy_drop, {**config, "precision": "INT8"}, {
        "tool": f"nncf {nncf.__version__}", "method": "ptq", "preset": preset, "subset_size": subset_size,
        "quantized_modules": list(QUANTIZED_MODULES), "max_accuracy_drop": max_accuracy_drop,
        "source": str(model_path)})


def train_quantized(weights, specs, output, subset_size, preset, max_accuracy_drop, overrides, device, resume):
    """Quantization-aware training of a weights.pth (see qat.py), exported to an INT8 IR by `export`'s exporter."""
    nncf = import_nncf()
    require_splits(specs, "train", "val")
    max_accuracy_drop = QAT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
    make_folder(output)
    quantized, checkpoint, summary = quantization_aware_training(weights, specs, output, subset_size, preset,
                                                                 max_accuracy_drop, overrides, device, resume)
    export_model(quantized.cpu().eval(), checkpoint, output, formats=("openvino",))
    fp32_path = export(weights, output / "fp32", formats=("openvino",))[0]
    return finish(output, fp32_path, specs, max_accuracy_drop, read_json(output / "config.json"), {
        "tool": f"nncf {nncf.__version__}", "method": "qat", "preset": preset,
        "quantized_modules": list(QUANTIZED_MODULES), "max_accuracy_drop": max_accuracy_drop,
        "checkpoint": WEIGHTS_INT8, **summary, "source": str(weights)})


def finish(output, fp32_path, specs, max_accuracy_drop, config, quantization):
    """config.json with the quantization settings, and performance.json (FP32 vs INT8)."""
    write_json(output / "config.json", {**config, "quantization": quantization})
    write_json(output / "performance.json", compare(fp32_path, output / "openvino.xml", specs, max_accuracy_drop))
    log.info("Wrote %s", output / "openvino.xml")
    return output / "openvino.xml"


def decoded_images(samples, schema):
    """The samples' images as HxWx3 uint8 arrays, decoded as in inference."""
    loader = make_loader(samples, schema, {"batch_size": 1, "num_workers": 0}, torch.device("cpu"))
    return [images[0] for images in loader_images(loader)]


def validation_map(schema):
    """NNCF's validation function: (mAP@0.5, per-image mAP@0.5) of a compiled model on (image, sample) items,
    by the task's headline (masks for instance segmentation).

    Its history attribute lists (items, mAP@0.5) of each call, the FP32 model's first.
    """
    task = task_of(schema)

    def validate(compiled, items):
        images, samples = zip(*items)  # items: NNCF's iterable of (image, sample)
        predictions = []
        for image in tqdm(images, desc="validating", unit="img", leave=False, disable=None):
            result = compiled([exported_input(image)])
            predictions.append(as_detections(dict(zip(task.outputs, (result[o] for o in compiled.outputs)))))
        per_image = [coco_map([s], [p], schema)[task.headline] for s, p in zip(samples, predictions)]
        whole = coco_map(samples, predictions, schema)[task.headline]
        validate.history.append((len(samples), whole))
        return whole, per_image
    validate.history = []
    return validate


def compare(fp32_path, int8_path, specs, max_accuracy_drop):
    """performance.json: the INT8 model's eval figures, and FP32 vs INT8 side by side (with latency)."""
    split = next(name for name in ("test", "val", "train") if name in specs)
    schema = load_predictor(fp32_path, "cpu").schema
    task = task_of(schema)
    keys = [KEY_PREFIX[iou_type] + key for iou_type in task.iou_types for key in ("map_50", "map_50_95")]
    image = decoded_images(load_split(specs[split], known_classes=label_names(schema)).samples[:1], schema)[0]
    figures, performance = {}, {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        performance = evaluate(path, {"test": specs[split]})  # the int8 figures are left in performance
        predictor = load_predictor(path, "cpu")
        figures[name] = {key: performance[key] for key in (*keys, "f-measure")}
        figures[name]["latency_ms"] = latency_ms(predictor, image, LATENCY_RUNS)
    drop = figures["fp32"][task.headline] - figures["int8"][task.headline]
    for name, row in figures.items():
        log.info("%s: %s  F1 %.3f  latency %.1f ms", name.upper(), headline_figures(row, task, 3), row["f-measure"],
                 row["latency_ms"])
    log.info("INT8 is %.2fx faster; %smAP@0.5 drop %.3f on the %s split", figures["fp32"]["latency_ms"] /
             figures["int8"]["latency_ms"], task.unit, drop, split)
    performance = {**performance, "split": split, "comparison": figures, f"{task.headline}_drop": drop}
    if max_accuracy_drop is not None:
        performance.update(max_accuracy_drop=max_accuracy_drop, max_accuracy_drop_met=drop <= max_accuracy_drop)
        if drop > max_accuracy_drop:
            log.warning("The INT8 model misses --max-accuracy-drop %g by %.3f: its %smAP@0.5 drop is %.3f on the %s "
                        "split (the bound is kept on val).", max_accuracy_drop, drop - max_accuracy_drop,
                        task.unit, drop, split)
    return performance
