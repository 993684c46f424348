"""`--batch-size auto`: the batch size for this model on this device, found by trying training steps, as OTX's
adaptive batch size does. On a GPU: the largest that fits in memory with a margin; on a CPU: the fastest."""

import copy
import logging
import math
import resource
import time

import psutil
import torch

from otxlite.core.errors import OtxliteError
from otxlite.data.loader import make_loader
from otxlite.engine.loop import on_device

log = logging.getLogger("otxlite")
GPU_MEMORY_SHARE = 0.8  # a batch fits when its peak memory stays under this share of the GPU's
CPU_MEMORY_SHARE = 0.5  # of the memory available when the search starts
LARGEST = 128
CPU_LARGEST = 32
CPU_STEPS = 2  # timed training steps per candidate on a CPU, after one untimed
SMALLEST = 2  # BatchNorm layers that reduce to 1x1 cannot train on one image


def auto_batch_size(model, samples, schema, params, device, pipeline, input_size, masks):
    """(batch size, reason): training steps on samples (augmented by pipeline) tried at growing batch sizes.

    The model's weights and BatchNorm statistics are as they were afterwards (no optimizer step is taken)."""
    saved = copy.deepcopy(model.state_dict())
    probe = {**params, "num_workers": 0}
    largest = max(min(LARGEST if device.type == "cuda" else CPU_LARGEST, len(samples)), SMALLEST)

    def batch(batch_size):
        loader = make_loader((samples * math.ceil(batch_size / len(samples)))[:batch_size], schema,
                             {**probe, "batch_size": batch_size}, device, train=True, pipeline=pipeline,
                             input_size=input_size, masks=masks)
        return on_device(next(iter(loader)), device)

    def step(images, targets):
        model.train()
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = sum(model(images, targets).values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        if device.type == "cuda":
            chosen, reason = largest_fitting(lambda size: gpu_memory_share(step, batch(size), device), largest)
        else:
            chosen, reason = fastest(lambda size: cpu_images_per_second(step, batch(size)), largest)
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    return chosen, reason


def gpu_memory_share(step, batch, device):
    """The share of the GPU's memory that a training step on batch peaks at (inf when out of memory)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step(*batch)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("inf")
    return torch.cuda.max_memory_allocated(device) / torch.cuda.get_device_properties(device).total_memory


def largest_fitting(memory_share, largest):
    """(batch size, reason): the largest power of two up to `largest` whose memory_share(size) stays under
    GPU_MEMORY_SHARE, trying 2, 4, 8, ... and stopping at the first that does not fit."""
    size, fitted, share = SMALLEST, None, None
    while size <= largest:
        measured = memory_share(size)
        if measured >= GPU_MEMORY_SHARE:
            break
        fitted, share = size, measured
        size *= 2
    if fitted is None:
        raise OtxliteError(f"--batch-size auto: a batch of {SMALLEST} images does not fit in {GPU_MEMORY_SHARE:.0%} of "
                           f"the GPU's memory. Lower the input size (params --model.kwargs.min_size) or use a smaller "
                           f"template.")
    stop = "the largest tried" if fitted * 2 > largest else f"{fitted * 2} would not fit"
    return fitted, f"the largest that fits in {GPU_MEMORY_SHARE:.0%} of the GPU's memory ({share:.0%} used; {stop})"


def cpu_images_per_second(step, batch):
    """Images per second of training steps on batch (images, targets)."""
    step(*batch)  # the first step at a size allocates; time the next ones
    started = time.perf_counter()
    for _ in range(CPU_STEPS):
        step(*batch)
    return len(batch[0]) * CPU_STEPS / (time.perf_counter() - started)


def fastest(images_per_second, largest):
    """(batch size, reason): of 2, 4, 8, ... up to `largest`, the smallest within 5 % of the most images per
    second; sizes stop growing once one is 5 % slower than the best, or when the process's peak memory has grown
    by CPU_MEMORY_SHARE of the memory available at the start."""
    available = psutil.virtual_memory().available
    peak_at_start = peak_memory()
    measured, size = {}, SMALLEST
    while size <= largest:
        measured[size] = images_per_second(size)
        if measured[size] < 0.95 * max(measured.values()):
            break
        if peak_memory() - peak_at_start > CPU_MEMORY_SHARE * available:
            break
        size *= 2
    best = max(measured.values())
    chosen = min(size for size, speed in measured.items() if speed >= 0.95 * best)
    tried = ", ".join(f"{size}: {speed:.1f}" for size, speed in measured.items())
    return chosen, f"the fastest on this CPU (images/s by batch size: {tried})"


def peak_memory():
    """This process's peak resident memory in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
