"""`otxlite predict --engine ray`: Ray Data tasks read and decode the images, an actor pool runs the model
(map_batches with a callable class, each actor loading the model once), and the rows stream back to this process,
which writes them as they come. Ray fuses the decoding into the CPU actors (same resources: no copy of the pixels
through the object store); GPU actors get their images from CPU tasks.
"""

import logging
import math
import signal
import threading
from pathlib import Path

import numpy as np
import ray

from otxlite.core.errors import ArgumentError
from otxlite.core.ray_cluster import init_ray
from otxlite.core.tasks import task_of
from otxlite.inference.backends import load_predictor
from otxlite.inference.images import decode
from otxlite.inference.writers import image_row, parquet, row_schema, skipped_row

log = logging.getLogger("otxlite")
BLOCK_BATCHES = 4  # a Ray Data block holds this many batches of images


class RayPredictor:
    """predict_files' rows from Ray Data; the model file is checked here, in this process, before Ray starts."""

    def __init__(self, model_path, device, workers):
        if str(device) == "cuda" and not workers.gpus_per_worker:
            raise ArgumentError("With --engine ray, ask for GPUs with --gpus-per-worker (e.g. 1).")
        checked = load_predictor(model_path, "cpu")  # a bad model file is one error now, not one per actor
        self.schema, self.confidence_threshold = checked.schema, checked.confidence_threshold
        self.model_path, self.workers = str(model_path), workers

    def rows(self, files, names, threshold, labels, batch_size):
        """Lists of rows (image_row, skipped_row) as the actors finish them, in no particular order."""
        if not files:
            return
        started = not ray.is_initialized()  # a program of the user's may have joined Ray already: use that one
        if started:
            init_ray(self.workers.address, logging_level="warning")
        handlers = interruptible()
        context = ray.data.DataContext.get_current()
        shown = context.enable_progress_bars, context.print_on_execution_start, logging.getLogger("ray.data").level
        try:
            context.enable_progress_bars, context.print_on_execution_start = False, False  # our bar, not Ray's
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # no line for the progress bars turned off
            gpus = self.workers.gpus_per_worker
            workers = self.workers.workers or self.default_workers()
            items = [{"path": str(path), "file_name": name} for path, name in zip(files, names)]
            blocks = max(workers, math.ceil(len(items) / (BLOCK_BATCHES * batch_size)))  # work for every actor
            dataset = ray.data.from_items(items, override_num_blocks=min(len(items), blocks))
            dataset = dataset.map(decoded, num_cpus=1).map_batches(
                BatchPredictor, fn_constructor_args=(self.model_path, "cuda" if gpus else "cpu", threshold, labels),
                batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus,
                batch_format="numpy")
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                yield batch.to_pylist()
        finally:
            context.enable_progress_bars, context.print_on_execution_start = shown[:2]
            logging.getLogger("ray.data").setLevel(shown[2])
            for stop, handler in handlers.items():
                signal.signal(stop, handler)
            if started:
                ray.shutdown()

    def default_workers(self):
        """One worker per GPU (over --gpus-per-worker) when asked for GPUs, else one per CPU of the cluster."""
        resources = ray.cluster_resources()
        if self.workers.gpus_per_worker:
            return max(1, int(resources.get("GPU", 0) // self.workers.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1)))


def interruptible():
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt in this (main) thread while Ray runs; returns the handlers
    they had. Without this both went unheard until the whole job had finished (Ray 2.60)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(*_):
        raise KeyboardInterrupt

    return {stop: signal.signal(stop, interrupt) for stop in (signal.SIGINT, signal.SIGTERM)}


def decoded(item):
    """A Ray Data row: the image as an HxWx3 uint8 array (empty when unreadable) and why it was skipped ("")."""
    image = decode(Path(item["path"]))
    if isinstance(image, str):
        return {"file_name": item["file_name"], "image": np.zeros((0, 0, 3), np.uint8), "skipped": image}
    return {"file_name": item["file_name"], "image": image, "skipped": ""}


class BatchPredictor:
    """One actor of the pool: the model loaded once, using the CPUs Ray gave the actor; batches of decoded images
    in, an Arrow table of rows out."""

    def __init__(self, model_path, device, threshold, labels):
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self.predictor = load_predictor(model_path, device, throughput=True, threads=threads)
        self.threshold, self.labels = threshold, labels
        self.masks = task_of(self.predictor.schema).masks

    def __call__(self, batch):
        images = list(batch["image"])
        readable = [i for i, reason in enumerate(batch["skipped"]) if not reason]
        found = dict(zip(readable, self.predictor([images[i] for i in readable]))) if readable else {}
        rows = [image_row(name, found[i], images[i].shape[:2], self.threshold, self.labels) if i in found
                else skipped_row(name, batch["skipped"][i], self.masks) for i, name in enumerate(batch["file_name"])]
        _, pa = parquet()
        return pa.Table.from_pylist(rows, schema=row_schema(pa, self.masks))
