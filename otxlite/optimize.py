"""`otxlite optimize`: NNCF post-training INT8 quantization of an exported OpenVINO IR."""

import logging
import random
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from otxlite import OtxliteError
from otxlite.data import load_split, make_loader, require_splits
from otxlite.evaluate import KEY_PREFIX, coco_map, evaluate, headline_figures
from otxlite.export import export, save_openvino
from otxlite.files import LABEL_SCHEMA, label_names, make_folder, read_json, write_json
from otxlite.predictors import exported_input, latency_ms, load_predictor, loader_images
from otxlite.tasks import as_detections, task_of

log = logging.getLogger("otxlite")
DEFAULT_SUBSET_SIZE = 300
LATENCY_RUNS = 20
# What NNCF may quantize: the layers of the detector's feature modules (backbone with FPN, RPN head, box head,
# class/box heads, mask head), named "/model/<module path>/..." in the exported graph. The rest (resize, anchors, box
# decoding, NMS, RoIAlign's arithmetic) stays in float: measured with OpenVINO's performance counters,
# quantizing it all made MobileNetV3-320 slower than FP32, and quantizing only convolutions and fully
# connected layers left FakeQuantize and Reorder nodes between int8 layers and float residual Adds.
QUANTIZED_MODULES = ("backbone", "rpn/head", "roi_heads/box_head", "roi_heads/box_predictor", "roi_heads/mask_head",
                     "roi_heads/mask_predictor", "head")
OUTSIDE_QUANTIZED_MODULES = rf"^(?!/model/({'|'.join(QUANTIZED_MODULES)})/).*"


def optimize(model_path, specs, output, subset_size=None, preset="mixed", max_accuracy_drop=None):
    """Quantize model_path (openvino.xml, or a weights.pth exported first) to output/openvino.xml in INT8.

    Calibrates on the train split; with max_accuracy_drop, keeps the drop of the task's headline mAP@0.5 (boxes,
    or masks for instance segmentation) on val within it.
    Also writes label_schema.json, config.json and performance.json (FP32 and INT8 side by side).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # NNCF's import warns of no CUDA
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # its INFO lists every ignored node; progress bars stay
    model_path, output = Path(model_path), Path(output)
    require_splits(specs, "train", *(["val"] if max_accuracy_drop is not None else []))
    if model_path.suffix == ".pth":
        model_path = export(model_path, output / "fp32", formats=("openvino",))[0]
    elif model_path.suffix != ".xml":
        raise OtxliteError(f"{model_path}: optimize takes an openvino.xml from `otxlite export` or a weights.pth.")
    fp32 = load_predictor(model_path, "cpu")
    model = ov.Core().read_model(str(model_path))  # from disk: NNCF fails on a model fresh from convert_model
    precision = ["model_info", "precision"]
    if model.has_rt_info(precision) and model.get_rt_info(precision).astype(str) == "INT8":
        raise OtxliteError(f"{model_path}: already INT8. Pass the FP32 openvino.xml that `otxlite export` wrote.")
    config_path = model_path.with_name("config.json")
    config = read_json(config_path) if config_path.is_file() else {}

    train = load_split(specs["train"], known_classes=label_names(fp32.schema))
    subset_size = checked_subset_size(subset_size, len(train.samples), specs["train"])
    subset = random.Random(0).sample(train.samples, subset_size)
    calibration = nncf.Dataset(decoded_images(subset, fp32.schema), exported_input)
    settings = {"preset": nncf.QuantizationPreset(preset), "subset_size": subset_size,
                "ignored_scope": nncf.IgnoredScope(patterns=[OUTSIDE_QUANTIZED_MODULES], validate=False)}
    log.info("Quantizing %s to INT8: %d calibration images from %s, preset %s", model_path, subset_size,
             specs["train"].ann_files, preset)
    if max_accuracy_drop is None:
        quantized = nncf.quantize(model, calibration, **settings)
    else:
        val = load_split(specs["val"], known_classes=label_names(fp32.schema))
        validation = nncf.Dataset(list(zip(decoded_images(val.samples, fp32.schema), val.samples)))
        validate = validation_map(fp32.schema)
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, validation, validate, max_drop=max_accuracy_drop, **settings)
        whole_split = [value for count, value in validate.history if count == len(val.samples)]
        log.info("Accuracy control on val: %smAP@0.5 FP32 %.3f, INT8 %.3f (drop bound %g, %d validations)",
                 task_of(fp32.schema).unit, whole_split[0], whole_split[-1], max_accuracy_drop, len(whole_split))

    make_folder(output)
    quantized.set_rt_info("INT8", precision)
    save_openvino(quantized, output / "openvino.xml")
    shutil.copy(model_path.with_name(LABEL_SCHEMA), output / LABEL_SCHEMA)
    write_json(output / "config.json", {**config, "precision": "INT8", "quantization": {
        "tool": f"nncf {nncf.__version__}", "preset": preset, "subset_size": subset_size,
        "quantized_modules": list(QUANTIZED_MODULES), "max_accuracy_drop": max_accuracy_drop,
        "source": str(model_path)}})
    performance = compare(model_path, output / "openvino.xml", specs, max_accuracy_drop)
    write_json(output / "performance.json", performance)
    log.info("Wrote %s", output / "openvino.xml")
    return output / "openvino.xml"


def checked_subset_size(asked, available, spec):
    if asked is None:
        return min(DEFAULT_SUBSET_SIZE, available)
    if asked > available:
        raise OtxliteError(f"--subset-size {asked}: the train split ({spec.ann_files}) has only {available} images. "
                           f"Pass --subset-size {available} or less, or add training images.")
    return asked


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
                        "split (NNCF kept it within the bound on val).", max_accuracy_drop, drop - max_accuracy_drop,
                        task.unit, drop, split)
    return performance
