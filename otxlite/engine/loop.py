"""The training loop that `otxlite train` and quantization-aware training (`otxlite optimize`) share: the optimizer
with its schedule and AMP scaler (Optimization: built, stepped an epoch at a time, saved and resumed), the weights'
moving average, BatchNorm re-estimation, the checkpoints both write, and confidence-threshold tuning."""

import contextlib
import logging
import math
import time

import torch
from tqdm import tqdm

from otxlite import __version__
from otxlite.core.errors import OtxliteError
from otxlite.core.files import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from otxlite.core.tasks import task_of
from otxlite.engine import distributed
from otxlite.engine.evaluate import performance_report, score
from otxlite.inference.backends import TorchPredictor, predict
from otxlite.models.build import load_state
from otxlite.models.tiling import with_tiling

log = logging.getLogger("otxlite")
WARMUP_START_FACTOR = 0.001
BATCHNORM_IMAGES = 64  # training images that re-estimate BatchNorm statistics before each validation


class Optimization:
    """SGD over model's trainable parameters, its learning-rate schedule (per iteration) and the AMP scaler: what
    an epoch steps and what checkpoints/last.pth keeps for resume."""

    def __init__(self, model, params, learning_rate, iters_per_epoch, device):
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                         momentum=params["momentum"], weight_decay=params["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(params, iters_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    @property
    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, model, loader, device, epoch, epochs, frozen_batchnorm=False, ema=None):
        """One epoch over loader (train_one_epoch); returns its mean losses."""
        return train_one_epoch(model, self.optimizer, self.scheduler, self.scaler, loader, device, epoch, epochs,
                               frozen_batchnorm, ema)

    def state_dict(self):
        """The checkpoint keys of the optimizer, the schedule and the scaler."""
        return {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, checkpoint):
        """Restore from a checkpoint that state_dict's keys went into."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])


def checkpoint_of(model, template, schema, epoch, **fields):
    """An otxlite checkpoint: model's weights with the template and label schema they go with, the epoch, and what
    the kind of checkpoint adds as fields (a weights.pth: confidence_threshold and metrics; checkpoints/last.pth:
    Optimization.state_dict() and the run's history; weights_int8.pth: the quantizers)."""
    return {"format_version": CHECKPOINT_FORMAT, "otxlite_version": __version__, "template": template,
            "labels": dict(schema), "model": model.state_dict(), "epoch": epoch, **fields}


def lr_schedule(params, iters_per_epoch):
    """Learning-rate factor per iteration: linear warm-up, then multistep (at epochs) or cosine.

    As in torchvision's references, warm-up lasts at most the first epoch.
    """
    warmup, total = min(params["warmup_iters"], iters_per_epoch), params["num_iters"] * iters_per_epoch
    steps, gamma, kind = params["lr_steps"], params["lr_gamma"], params["lr_scheduler"]
    if kind not in ("multistep", "cosine"):
        raise OtxliteError(f"lr_scheduler '{kind}' is not one of multistep, cosine.")

    def factor(iteration):
        if kind == "multistep":
            decay = gamma ** sum(iteration >= step * iters_per_epoch for step in steps)
        else:
            decay = 0.5 * (1 + math.cos(math.pi * min(iteration / max(total, 1), 1.0)))
        if iteration < warmup:
            alpha = iteration / warmup
            decay *= WARMUP_START_FACTOR * (1 - alpha) + alpha
        return decay

    return factor


def moving_average(model, settings):
    """An exponential moving average of model's weights (torch.optim.swa_utils.AveragedModel) as Ultralytics and
    timm keep one, or None when settings (a template's ema section) disable it.

    The decay warms up as in timm's ModelEmaV3: min(decay, 1 - (1 + t) ** -power) after t updates. The average
    spans about t ** power updates, so it follows the weights closely early on and smooths more as the run goes;
    a run of a few hundred updates on a small dataset still gets an average over the last epochs. BatchNorm's
    statistics are not averaged: they are re-estimated for the averaged weights before each validation.
    """
    if not settings["enable"]:
        return None
    decay, power = settings["decay"], settings["power"]

    def update(averaged, current, updates):
        weight = 1 - min(decay, 1 - (1 + int(updates)) ** -power)
        torch._foreach_lerp_(averaged, current, weight)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=False)


def train_one_epoch(model, optimizer, scheduler, scaler, loader, device, epoch, epochs, frozen_batchnorm=False,
                    ema=None):
    """One pass over loader; returns the mean of each loss term and of their sum ('loss').

    frozen_batchnorm: BatchNorm layers normalise with their running statistics and keep them. ema (an
    AveragedModel) is updated after each step.
    """
    model.train()
    if frozen_batchnorm:
        for layer in model.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.eval()
    sums, count, started = {}, 0, time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                    disable=None if distributed.is_main() else True)
    for batch in progress:
        with torch.autocast(device.type, enabled=device.type == "cuda"), one_image_batchnorm_error():
            loss_terms = model(*on_device(batch, device))
        loss = sum(loss_terms.values())
        if not torch.isfinite(loss):
            raise OtxliteError(f"Training diverged: loss is {loss.item()} at epoch {epoch + 1}. "
                               f"Lower the learning rate (params --learning_parameters.learning_rate X).")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        for name, value in loss_terms.items():
            sums[name] = sums.get(name, 0.0) + value.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        count += 1
        images_per_s = count * loader.batch_sampler.batch_size / (time.perf_counter() - started)
        progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                             img_s=f"{images_per_s:.1f}")
    means = torch.tensor([total / count for total in sums.values()], dtype=torch.float64)
    distributed.average([means])  # over the ranks: the loss of the whole process group's batches
    return {name: round(mean, 5) for name, mean in zip(sums, means.tolist())}


@contextlib.contextmanager
def one_image_batchnorm_error():
    """BatchNorm's error for a batch of one image (where a layer sees one value per channel) as a user error."""
    try:
        yield
    except ValueError as err:
        if "Expected more than 1 value per channel" not in str(err):
            raise
        raise OtxliteError("A training batch of one image reached a BatchNorm layer that needs two or more (this "
                           "template's head normalises over the batch). Use params "
                           "--learning_parameters.batch_size 2 or more, with at least two training images.") from None


def on_device(batch, device):
    """A loader's (uint8 images, targets) as the model's training input: float images in [0, 1] on device."""
    images, targets = batch
    images = [image.to(device, non_blocking=True).float().div_(255) for image in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items() if k != "image_id"} for t in targets]
    return images, targets


def smoothed_val(history, key, window):
    """The best-epoch rule's figure for the last epoch of history: the mean of `key` over its last `window` epochs,
    or None while fewer than window epochs are done.

    One epoch's val mAP on a small val split moves by chance; a lucky epoch between poor ones does not lift the
    mean of three, so it is not kept, and patience counts from the last real improvement (or tie).
    """
    if len(history) < window:
        return None
    return sum(row[key] for row in history[-window:]) / window


def reestimate_batchnorm(model, loader, device, max_images=BATCHNORM_IMAGES):
    """Set the running statistics of the model's BatchNorm layers to averages over up to max_images of loader.

    From random weights, BatchNorm's running averages (torchvision's MobileNetV3 updates them with
    momentum 0.01) trail weights that still change fast; evaluated with them, a model that trains well
    can lose every detection (BCCD at 480 px: val mAP@0.5 0.36 -> 0.00 in two epochs). Recomputing them
    for the current weights, as detectron2's PreciseBN does, removes that. train passes training images without
    augmentation: statistics of mosaics and zoomed-out grey canvases would not be those of the images the
    model is validated on. Frozen BatchNorm (pretrained backbones) is left alone.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over the batches that follow
    model.train()
    seen = 0
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"), one_image_batchnorm_error():
        for batch in loader:
            model(*on_device(batch, device))
            seen += len(batch[0])
            if seen >= max_images:
                break
    distributed.average([buffer for layer in layers for buffer in (layer.running_mean, layer.running_var)])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def tune_threshold(weights_path, model, template, schema, val_samples, val_loader, device):
    """Set weights.pth's confidence threshold to the best F1 on val (unless the template fixes it).
    val_loader holds this rank's share of val_samples."""
    checkpoint = load_checkpoint(weights_path)
    load_state(model, checkpoint["model"], weights_path)
    postprocessing = template["hyper_parameters"]["postprocessing"]
    fixed = None if postprocessing["result_based_confidence_threshold"] else postprocessing["confidence_threshold"]
    predictions = distributed.gather_shards(predict(with_tiling(TorchPredictor(model, schema, fixed, template, device)),
                                                    val_loader))
    performance, result = score(val_samples, predictions, schema, fixed)
    if not distributed.is_main():
        return
    if fixed is None:
        log.info("Setting confidence threshold to %g based on results", performance["confidence_threshold"])
    checkpoint["confidence_threshold"], checkpoint["metrics"] = performance["confidence_threshold"], performance
    checkpoint["threshold_tuned"] = True
    save_checkpoint(weights_path, checkpoint)
    log.info("Validation of the best epoch (%d):%s", checkpoint["epoch"],
             performance_report(performance, result, tuned=fixed is None, task=task_of(template)))
