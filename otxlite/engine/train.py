"""`otxlite train`: fine-tune a template's model, keeping the best epoch (by the task's headline val mAP@0.5)
as weights.pth."""

import contextlib
import csv
import io
import logging
import math
import time
from pathlib import Path

import torch

from otxlite.core.errors import OtxliteError
from otxlite.core.files import (
    is_checkpoint,
    load_checkpoint,
    log_file,
    read_torch_file,
    save_checkpoint,
    write_atomic,
)
from otxlite.core.labels import LabelSchema, label_names
from otxlite.core.report import plot_history
from otxlite.core.tasks import task_of
from otxlite.core.visualize import draw_batch
from otxlite.data.augment import Pipeline, without_heavy
from otxlite.data.loader import adaptive_repeats, make_loader
from otxlite.data.records import load_splits
from otxlite.data.specs import hold_out_val, require_splits
from otxlite.engine import distributed
from otxlite.engine.batch_size import auto_batch_size
from otxlite.engine.evaluate import coco_map, headline_figures
from otxlite.engine.loop import (
    BATCHNORM_IMAGES,
    Optimization,
    checkpoint_of,
    moving_average,
    reestimate_batchnorm,
    smoothed_val,
    tune_threshold,
)
from otxlite.inference.backends import TorchPredictor, pick_device, predict
from otxlite.models import tiling
from otxlite.models.anchors import fit_anchors, warn_small_objects
from otxlite.models.build import InputSize, build_model, grown_class_heads, load_state
from otxlite.models.templates import apply_overrides, flatten, recipe

log = logging.getLogger("otxlite")
FEW_VAL_OBJECTS = 100  # below this, train warns that one epoch's val figure is noisy


def train(template, specs, output, overrides=None, pretrained=True, load_weights=None, device="auto",
          seed=0, resume=False, val_split=None, devices=1, ray=None, report=None, new_head=False):
    """Train template on the train split, validating on val each epoch; returns the weights.pth path.

    output receives weights.pth (best epoch), label_schema.json, checkpoints/last.pth (for --resume),
    train_batch.jpg (the first augmented batch) and logs/ (train.log, metrics.csv, loss.png). With val_split, a
    seeded part of train is held out as val and the split saved as output/data.yaml.
    devices > 1 trains in that many processes with DistributedDataParallel started here; ray (an OnRay) trains as
    its workers (default 1) Ray Train workers on the cluster at its address. Under torchrun, each process calls train with
    devices 1 and joins torchrun's process group. report(figures, folder), in a run of one process, receives each
    epoch's figures (`otxlite tune` stops trials from it).
    load_weights, an otxlite weights.pth, is grown (class-incremental): its classes keep their ids, colours and
    head rows, and the data's new classes are added after them. With new_head, its class head is dropped instead
    and a new one trains on the data's classes alone.
    """
    output = Path(output)
    if val_split is not None:
        with log_file(output / "logs" / "train.log"):
            specs = hold_out_val(specs, val_split, seed, output)
    if ray is not None:  # its workers may run in another working directory
        output, specs = output.absolute(), {name: spec.absolute() for name, spec in specs.items()}
        load_weights = load_weights and Path(load_weights).absolute()
    arguments = (template, specs, output, overrides, pretrained, load_weights, device, seed, resume, new_head)
    workers = ray.workers or 1 if ray is not None else devices
    if ray is not None or devices > 1:
        check_before_launch(template, overrides, workers, ray is not None, resume, output,
                            not pretrained and not load_weights)
    if ray is not None:
        distributed.launch_ray(train_process, arguments, workers, pick_device(device), ray.address, output)
    elif devices > 1:
        distributed.launch(train_process, arguments, devices, pick_device(device))
    else:
        train_process(*arguments, report=report)
    return output / "weights.pth"


def check_before_launch(template, overrides, devices, on_ray, resume, output, from_scratch):
    """The template's recipe with its overrides checked in this process, before any worker starts: a bad value is
    one error here, not one in every worker."""
    if resume:
        template = load_checkpoint(output / "checkpoints" / "last.pth")["template"]
    template = recipe(template, from_scratch and not resume)
    params = apply_overrides(template, overrides or {})["hyper_parameters"]["learning_parameters"]
    if params["batch_size"] == "auto" and devices > 1:
        processes = f"--workers {devices}" if on_ray else f"--devices {devices}"
        raise OtxliteError(f"--batch-size auto chooses the batch of one process; with {processes} give a number "
                           f"(--batch-size N: each process takes N images).")


def train_process(template, specs, output, overrides, pretrained, load_weights, device, seed, resume, new_head,
                  report=None):
    """Training as one process runs it: all of it when alone, one rank's part in a process group.
    report(figures, folder), when given, receives each epoch's figures and the checkpoint folder (Ray Train)."""
    with distributed.process_group(pick_device(device)) as device:
        with log_file(output / "logs" / "train.log") if distributed.is_main() else contextlib.nullcontext():
            run(template, specs, output, overrides, pretrained, load_weights, device, seed, resume, new_head, report)


def run(template, specs, output, overrides, pretrained, load_weights, device, seed, resume, new_head, report):
    """One process's training, in steps: the run's recipe, its data, its model, the loaders and the optimizer (or
    the resumed ones), then the epochs, each validated and checkpointed, then the tuned confidence threshold."""
    rank, world_size, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    last_path = output / "checkpoints" / "last.pth"
    state = load_checkpoint(last_path) if resume else None
    template, pretrained, reference_batch = run_recipe(template, overrides, pretrained, load_weights, state, last_path)
    params = template["hyper_parameters"]["learning_parameters"]
    settings = template["hyper_parameters"]["distributed"]
    task = task_of(template)
    grow = None if new_head else grown_model(load_weights, state)
    splits, schema, val_objects = training_data(specs, task, params, state, output, grow)
    window = min(params["best_epoch_window"], params["num_iters"])  # epochs whose mean val picks the best
    model, template, train_samples = model_for_data(template, splits, schema, pretrained, load_weights, seed, state)
    model.to(device)
    augmentation = template["hyper_parameters"]["augmentation"]
    if params["batch_size"] == "auto":
        choose_batch_size(model, train_samples, schema, params, device, Pipeline(augmentation), task.masks,
                          reference_batch)
    ema = moving_average(model, template["hyper_parameters"]["ema"])
    evaluated = model if ema is None else ema.module  # what is validated, saved and exported
    trained = distributed.wrap(model, device, settings["sync_bn"])

    repeats = adaptive_repeats(len(train_samples), params["batch_size"] * world_size) \
        if params["adaptive_repeat"] else 1
    if repeats > 1:
        log.info("Small training set: each epoch passes over its %d images %d times (adaptive_repeat).",
                 len(train_samples), repeats)

    def training_loader(augmentation):
        return make_loader(train_samples, schema, params, device, train=True, seed=seed,
                           pipeline=Pipeline(augmentation), input_size=InputSize.of(model), masks=task.masks,
                           rank=rank, world_size=world_size, repeats=repeats)

    closing = without_heavy(augmentation)  # the recipe of the last epochs, None when it is the same
    closing_from = params["num_iters"] - math.ceil(params["close_mosaic_share"] * params["num_iters"])
    train_loader = training_loader(augmentation)
    if state is None and main:
        draw_batch(train_loader, schema, output / "train_batch.jpg")
    val_loader = make_loader(splits["val"].samples[rank::world_size], schema, params, device)  # this rank's share
    statistics_loader = make_loader(train_samples, schema, params, device, train=True, seed=seed,
                                    masks=task.masks, rank=rank, world_size=world_size)  # as validation sees them
    learning_rate = params["learning_rate"] * (world_size if settings["scale_lr"] else 1)
    optimization = Optimization(model, params, learning_rate, len(train_loader), device)
    history, start_epoch, best = [], 0, None
    if state is not None:
        history, start_epoch, best = resumed(state, model, ema, optimization, params, output, last_path)

    log.info("Training %s on %s for %d epochs (batch %d, lr %g, %s pretrained weights)", template["id"],
             f"{world_size} processes ({device.type}, batch {params['batch_size']} each)" if world_size > 1 else device,
             params["num_iters"], params["batch_size"] * world_size, learning_rate, "with" if pretrained else "without")
    for epoch in range(start_epoch, params["num_iters"]):
        torch.manual_seed(seed * 1000 + epoch)  # the epoch's randomness depends on (seed, epoch) alone
        if closing is not None and epoch >= closing_from:
            log.info("Epoch %d on: Mosaic and the heavy geometric transforms off (close_mosaic_share %g).",
                     epoch + 1, params["close_mosaic_share"])
            train_loader, closing = training_loader(closing), None
        train_loader.batch_sampler.set_epoch(epoch)
        started = time.perf_counter()
        losses = optimization.train_epoch(trained, train_loader, device, epoch, params["num_iters"], ema=ema)
        train_seconds = time.perf_counter() - started
        reestimate_batchnorm(evaluated, statistics_loader, device, BATCHNORM_IMAGES // world_size)
        predictions = distributed.gather_shards(predict(
            tiling.with_tiling(TorchPredictor(evaluated, schema, None, template, device)), val_loader))
        metrics = coco_map(splits["val"].samples, predictions, schema)
        row = {"epoch": epoch + 1, **losses, "lr": optimization.learning_rate,
               **{f"val_{k}": v for k, v in metrics.items()},
               "seconds": round(time.perf_counter() - started, 2),
               "images_per_s": round(repeats * len(train_samples) / train_seconds, 2)}
        history.append(row)
        smoothed = smoothed_val(history, f"val_{task.headline}", window)
        # a tie goes to the later epoch: trained longer at a lower learning rate (val saturates on easy data)
        improved = smoothed is not None and (best is None or smoothed >= best["value"] or not val_objects)
        if improved:
            best = {"value": smoothed, "epoch": epoch + 1}
        if main and (improved or best is None):  # until the first full window, each epoch stands in for the best
            save_checkpoint(output / "weights.pth", checkpoint_of(
                evaluated, template, schema, epoch + 1, metrics=metrics,
                confidence_threshold=template["hyper_parameters"]["postprocessing"]["confidence_threshold"]))
        mean = "" if smoothed is None or window == 1 else f" (mean of {window}: {smoothed:.4f})"
        log.info("epoch %d/%d  loss %.4f  val %s%s  %.1f s  %.2f img/s%s", epoch + 1, params["num_iters"],
                 losses["loss"], headline_figures(metrics, task), mean, row["seconds"], row["images_per_s"],
                 "  (best, saved weights.pth)" if improved else "  (saved weights.pth)" if best is None else "")
        stopped_early = should_stop(params, epoch + 1, best)
        if main:
            save_checkpoint(last_path, checkpoint_of(
                model, template, schema, epoch + 1, ema=ema and ema.state_dict(), **optimization.state_dict(),
                pretrained=pretrained, best_metric=best, history=history, stopped_early=stopped_early))
            write_logs(output / "logs", history)
        if report:
            report(row, last_path.parent)
        if stopped_early:
            log.info("Early stopping: no better val %smAP@0.5 (mean of %d epochs) for %d epochs since epoch %d.",
                     task.unit, window, params["early_stop_patience"], best["epoch"])
            break
    distributed.barrier()  # weights.pth, which rank 0 wrote, is complete
    tune_threshold(output / "weights.pth", model, template, schema, splits["val"].samples, val_loader, device)
    log.info("Best val %smAP@0.5 (mean of %d epochs) %.4f at epoch %d: %s", task.unit, window, best["value"],
             best["epoch"], output / "weights.pth")
    return output / "weights.pth"


def run_recipe(template, overrides, pretrained, load_weights, state, last_path):
    """(template, pretrained, reference batch): the resumed run's template or the one given, with its from-scratch
    recipe when it starts from random weights, then the overrides; whether it starts from pretrained weights; and
    the batch size its learning rate was set for."""
    if state is not None:
        template = state["template"]
        log.info("Resuming %s from epoch %d of %s", template["id"], state["epoch"], last_path)
    pretrained = state["pretrained"] if state is not None else pretrained and not load_weights
    from_scratch = state is None and not pretrained and not load_weights
    if from_scratch and template.get("from_scratch"):
        log.info("From random weights: %s trains with its from_scratch recipe (%s).", template["id"],
                 ", ".join(f"{key} {value}" for key, value in flatten(template["from_scratch"]).items()))
    template = recipe(template, from_scratch)
    reference_batch = template["hyper_parameters"]["learning_parameters"]["batch_size"]  # its learning rate's
    return apply_overrides(template, overrides or {}), pretrained, reference_batch


def grown_model(load_weights, state):
    """(label schema, path) of the model whose classes training keeps and grows: load_weights when it is an otxlite
    weights.pth, or the model a resumed run grows; None when there is none."""
    if state is not None:
        source = state["labels"].get("grown_from", {}).get("model")
        return (LabelSchema.of(state["labels"]), source) if source else None
    checkpoint = read_torch_file(load_weights) if load_weights else None
    if is_checkpoint(checkpoint):
        return LabelSchema.of(checkpoint["labels"]), load_weights
    return None


def training_data(specs, task, params, state, output, grow):
    """(splits, label schema, val objects): train and val loaded for task (growing the classes of grow, see
    grown_model), the label schema written, and the warnings about a val split too small to pick the best epoch
    (without objects, early stopping is off)."""
    require_splits(specs, "train", "val")
    splits, schema = load_splits(specs, task=task.name, grow=grow)
    if state is not None:
        if label_names(schema) != label_names(state["labels"]):
            raise OtxliteError(f"The data's classes {label_names(schema)} differ from the resumed run's "
                               f"{label_names(state['labels'])}. Resume with the same data.")
        schema = LabelSchema.of(state["labels"])  # with the run's own record of a merge
    if distributed.is_main():
        LabelSchema.of(schema).write(output)
    for name in ("train", "val"):
        log.info("%s split: %d images, %d %s", name, len(splits[name].samples),
                 sum(len(s.boxes) for s in splits[name].samples), "instances" if task.masks else "boxes")
    window = min(params["best_epoch_window"], params["num_iters"])
    val_objects = sum(not ignored for s in splits["val"].samples for ignored in s.ignored)
    if not val_objects:
        log.warning("val split: no objects in its %d images, so val mAP is 0 every epoch and cannot pick an epoch: "
                    "early stopping is off and weights.pth is the last epoch. Give val annotated images (or "
                    "--val-split) to keep the best one.", len(splits["val"].samples))
        params["enable_early_stopping"] = False
    elif val_objects < FEW_VAL_OBJECTS:
        log.warning("val split: %d objects (under %d), so one epoch's val mAP@0.5 can move by about +-%.2f by chance "
                    "(1/sqrt(objects)). The best epoch is chosen on the mean of %d epochs' val; more val images (a "
                    "larger --val-split) make the choice surer.", val_objects, FEW_VAL_OBJECTS,
                    1 / math.sqrt(val_objects), window)
    return splits, schema, val_objects


def model_for_data(template, splits, schema, pretrained, load_weights, seed, state):
    """(model, template, training samples): the model built (seeded) and started from load_weights when given, with
    the template's tiling decided and its anchors fitted to the training boxes (unless it names them)."""
    if load_weights:
        template = with_anchors_of(template, load_weights)
    torch.manual_seed(seed)
    model = build_model(template, len(schema["labels"]), pretrained=pretrained)
    if load_weights:
        start_from(model, load_weights, schema)
    template = tiling.decided(template, model, splits["train"].samples, schema)
    train_samples = tiling.training_samples(splits["train"].samples, template, seed)
    warn_small_objects(model, template, train_samples, schema)
    if state is None and not template["model"].get("anchors"):
        # seeded, so every rank fits the same anchors
        template = fit_anchors(model, template, train_samples, schema, pretrained)
    return model, template, train_samples


def resumed(state, model, ema, optimization, params, output, last_path):
    """(history, epoch to start from, best): the model, its weight average and the optimization restored from
    checkpoints/last.pth. A run whose epochs are done starts at the end, to finish its threshold tuning."""
    load_state(model, state["model"], last_path)
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    elif ema is not None:
        ema.update_parameters(model)  # a run saved without an average starts one from its weights
        log.info("%s holds no weight average: the average starts from its weights.", last_path)
    optimization.load_state_dict(state)
    history, start_epoch, best = state["history"], state["epoch"], state["best_metric"]
    if start_epoch >= params["num_iters"] or state.get("stopped_early"):
        if load_checkpoint(output / "weights.pth").get("threshold_tuned"):
            raise OtxliteError(f"{last_path}: the run already finished after {start_epoch} epochs. To train "
                               f"longer, add params --learning_parameters.num_iters N with N > {start_epoch}.")
        log.info("The run's epochs are done; finishing its confidence-threshold tuning.")
        start_epoch = params["num_iters"]
    return history, start_epoch, best


def choose_batch_size(model, samples, schema, params, device, pipeline, masks, reference_batch):
    """Set params' batch_size for `auto` (batch_size.auto_batch_size) and scale its learning rate from the
    template's batch (reference_batch) linearly."""
    if distributed.world_size() > 1:
        raise OtxliteError("--batch-size auto chooses the batch of one process: give a number when training in "
                           "several (--devices or --workers).")
    chosen, reason = auto_batch_size(model, samples, schema, params, device, pipeline, InputSize.of(model), masks)
    rate, params["batch_size"] = params["learning_rate"], chosen
    if isinstance(reference_batch, int):
        params["learning_rate"] = rate * chosen / reference_batch
        scaling = f"learning rate {rate:g} -> {params['learning_rate']:g} (x {chosen}/{reference_batch})"
    else:
        scaling = f"learning rate {rate:g} kept (the template names no batch size it was set for)"
    log.info("Batch size (auto): %d, %s; %s.", chosen, reason, scaling)


def with_anchors_of(template, path):
    """template with the anchors of the otxlite weights.pth at path, so its weights fit the model built."""
    checkpoint = read_torch_file(path)
    anchors = checkpoint.get("template", {}).get("model", {}).get("anchors") if isinstance(checkpoint, dict) else None
    return {**template, "model": {**template["model"], "anchors": anchors}} if anchors else template


def start_from(model, path, schema):
    """Initialise from an otxlite weights.pth, or from a plain torchvision state_dict file.

    When schema grows the weights.pth's classes, each keeps its class-head rows and new classes start fresh;
    otherwise (a new head, a state_dict) the class head starts fresh.
    """
    checkpoint = read_torch_file(path)
    if is_checkpoint(checkpoint):
        old = label_names(checkpoint["labels"])
        grows = label_names(schema)[:len(old)] == old
        state_dict = grown_class_heads(checkpoint["model"], model, len(old)) if grows else checkpoint["model"]
    elif isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        grows, old, state_dict = False, [], checkpoint
    else:
        raise OtxliteError(f"--load-weights {path}: neither an otxlite weights.pth nor a state_dict.")
    load_state(model, state_dict, path, keep_class_head=grows)
    added = len(label_names(schema)) - len(old)
    log.info("Started from %s (%s)", path, "class head re-initialised" if not grows else "all weights" if not added
             else f"all weights; class-head rows for {added} new class(es) initialised fresh")


def should_stop(params, epoch, best):
    """Early stopping: patience counts on the smoothed val figure, from early_stop_start or early_stop_min_share of
    the schedule, whichever is later."""
    start = max(params["early_stop_start"], math.ceil(params["early_stop_min_share"] * params["num_iters"]))
    return (params["enable_early_stopping"] and best is not None and epoch >= start
            and epoch - best["epoch"] >= params["early_stop_patience"])


def write_logs(folder, history):
    """metrics.csv (one row per epoch) and loss.png (loss and val mAP per epoch)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[-1]))
    writer.writeheader()
    writer.writerows(history)
    write_atomic(folder / "metrics.csv", lambda f: f.write(buffer.getvalue().encode()))
    plot_history(history, folder / "loss.png")
