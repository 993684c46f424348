"""Quantization-aware training for `otxlite optimize`: a weights.pth quantized by NNCF, then fine-tuned with the
training loop of `otxlite train` (engine.loop) until its val mAP@0.5 is back within the accuracy budget."""

import logging
import random
import time
from pathlib import Path

import torch

from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_checkpoint, load_weights, save_checkpoint
from otxlite.core.labels import LabelSchema, label_names
from otxlite.core.tasks import task_of
from otxlite.data.loader import make_loader
from otxlite.data.records import load_split
from otxlite.engine.evaluate import coco_map, headline_figures
from otxlite.engine.loop import Optimization, checkpoint_of, on_device, tune_threshold
from otxlite.inference.backends import TorchPredictor, pick_device, predict
from otxlite.models.build import InputSize, load_state, model_from_checkpoint
from otxlite.models.quantization import checked_subset_size, quantization_config, quantize_model, rebuild_quantized
from otxlite.models.templates import apply_overrides
from otxlite.models.tiling import settings_of, training_samples, with_tiling

log = logging.getLogger("otxlite")
WEIGHTS_INT8 = "weights_int8.pth"


def quantization_aware_training(weights, specs, output, subset_size, preset, max_accuracy_drop, overrides=None,
                                device="auto", resume=False):
    """Quantize weights (a weights.pth) with NNCF, calibrated on subset_size train images, and fine-tune it on train
    until its val drop of the task's headline mAP@0.5 against FP32 is at most max_accuracy_drop (at most
    params --qat.epochs epochs). Writes output/weights_int8.pth (the best epoch, its quantizers, its tuned
    confidence threshold) and output/checkpoints/last.pth (for resume); returns (the quantized model, its
    checkpoint, the qat figures for config.json)."""
    weights, output = Path(weights), Path(output)
    checkpoint = load_weights(weights)
    if "quantization" in checkpoint:
        raise OtxliteError(f"{weights}: already quantized. Pass the FP32 weights.pth that `otxlite train` wrote.")
    schema = LabelSchema.read(weights, expected=checkpoint["labels"])
    last_path = output / "checkpoints" / "last.pth"
    state = load_checkpoint(last_path) if resume else None
    template = apply_overrides(state["template"] if state else checkpoint["template"], overrides or {})
    params = dict(template["hyper_parameters"]["learning_parameters"])
    settings = template["hyper_parameters"]["qat"]
    params.update(learning_rate=params["learning_rate"] * settings["lr_factor"], num_iters=settings["epochs"])
    if params["batch_size"] < 2:
        raise OtxliteError("Quantization-aware training needs training batches of 2 images or more (NNCF's "
                           "training mode). Use params --learning_parameters.batch_size 2 or more.")
    task, device = task_of(schema), pick_device(device)
    train = load_split(specs["train"], known_classes=label_names(schema), masks=task.masks)
    train_samples = training_samples(train.samples, template)
    val = load_split(specs["val"], known_classes=label_names(schema))
    subset_size = checked_subset_size(subset_size, len(train_samples), specs["train"],
                                      bool(settings_of(template)))
    model = model_from_checkpoint(checkpoint, weights).to(device)
    val_loader = make_loader(val.samples, schema, params, device)

    def validate(network):
        predictor = with_tiling(TorchPredictor(network, schema, None, template, device))
        return coco_map(val.samples, predict(predictor, val_loader), schema)

    started = time.perf_counter()
    fp32 = state["fp32_metrics"] if state else validate(model)
    if state:
        quantized = rebuild_quantized(model, state["quantization"]).to(device)
        load_state(quantized, state["model"], last_path)
        log.info("Resuming quantization-aware training from epoch %d of %s", state["epoch"], last_path)
    else:
        subset = random.Random(0).sample(train_samples, subset_size)
        calibration = make_loader(subset, schema, {**params, "batch_size": 1}, device)
        log.info("Quantizing %s (PyTorch) to INT8: %d calibration images from %s, preset %s", weights, subset_size,
                 specs["train"].ann_files, preset)
        quantized = quantize_model(model, calibration, lambda batch: on_device(batch, device)[0], preset, subset_size)
    train_loader = make_loader(train_samples, schema, params, device, train=True, input_size=InputSize.of(model),
                               masks=task.masks)
    optimization = Optimization(quantized, params, params["learning_rate"], len(train_loader), device)
    config = quantization_config(quantized)
    history, best = [], None
    if state:
        optimization.load_state_dict(state)
        history, best = state["history"], state["best_metric"]
    else:
        history.append(epoch_row(0, {}, validate(quantized), fp32, task))
    epoch = history[-1]["epoch"]
    while True:
        row = history[-1]
        log.info("QAT epoch %d/%d: val %s, drop %.4f against FP32 %.4f%s", row["epoch"], params["num_iters"],
                 headline_figures(row["metrics"], task), row["drop"], fp32[task.headline],
                 " (after post-training quantization)" if row["epoch"] == 0 else "")
        if best is None or row["drop"] < best["drop"]:
            best = {"drop": row["drop"], "epoch": row["epoch"]}
            save_checkpoint(output / WEIGHTS_INT8, int8_checkpoint(quantized, config, template, schema, checkpoint,
                                                                   row, weights))
        within = row["drop"] <= max_accuracy_drop
        save_checkpoint(last_path, {**int8_checkpoint(quantized, config, template, schema, checkpoint, row, weights),
                                    **optimization.state_dict(), "history": history, "best_metric": best,
                                    "fp32_metrics": fp32})
        if within or epoch >= params["num_iters"]:
            break
        torch.manual_seed(epoch)  # as in train: the epoch's randomness (R-CNN's box sampling) depends on it alone
        train_loader.batch_sampler.set_epoch(epoch)
        losses = optimization.train_epoch(quantized, train_loader, device, epoch, params["num_iters"],
                                          frozen_batchnorm=True)
        epoch += 1
        history.append(epoch_row(epoch, losses, validate(quantized), fp32, task))
    if within:
        log.info("The val %smAP@0.5 drop %.4f is within --max-accuracy-drop %g after %d epoch(s).", task.unit,
                 row["drop"], max_accuracy_drop, epoch)
    else:
        log.warning("After %d QAT epoch(s) the smallest val %smAP@0.5 drop is %.4f (epoch %d), over "
                    "--max-accuracy-drop %g; keeping that epoch. Train longer with params --qat.epochs N.", epoch,
                    task.unit, best["drop"], best["epoch"], max_accuracy_drop)
    tune_threshold(output / WEIGHTS_INT8, quantized, template, schema, val.samples, val_loader, device)
    summary = {"subset_size": subset_size, "epochs": epoch, "best_epoch": best["epoch"], "learning_rate": params["learning_rate"],
               "batch_size": params["batch_size"], "val_fp32": fp32[task.headline], "val_drop": best["drop"],
               "minutes": round((time.perf_counter() - started) / 60, 2),
               "history": [{k: v for k, v in row.items() if k != "metrics"} for row in history]}
    return quantized, load_weights(output / WEIGHTS_INT8), summary


def epoch_row(epoch, losses, metrics, fp32, task):
    return {"epoch": epoch, **losses, "metrics": metrics, "drop": round(fp32[task.headline] - metrics[task.headline], 6)}


def int8_checkpoint(model, config, template, schema, source, row, weights):
    """weights_int8.pth: a weights.pth with the NNCF quantizers' config (nncf.torch.get_config)."""
    return checkpoint_of(model, template, schema, row["epoch"], quantization=config, metrics=row["metrics"],
                      confidence_threshold=source["confidence_threshold"], source=str(weights))
