"""`otxlite predict`: detections (with RLE masks for instance segmentation) for a folder, a glob or a list of
images, as COCO results JSON, CSV or Parquet shards; in this process, or on Ray Data (see predict_ray)."""

import logging
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import LabelSchema
from otxlite.core.tasks import task_of
from otxlite.core.thresholds import confidence_threshold
from otxlite.inference import writers
from otxlite.inference.backends import load_predictor
from otxlite.inference.images import detect_images, file_name, image_files, warn_skipped
from otxlite.inference.writers import image_row, skipped_row

log = logging.getLogger("otxlite")


def predict_files(model_path, input_path, output, output_format=None, threshold=None, batch_size=8, device="auto",
                  resume=False, ray=None):
    """Write the detections scoring above threshold (default: the model's) for every image of input_path.

    JSON is a COCO results list (image_id numbers the files in sorted order from 1; file_name, category_name
    added); CSV has one detection a row (writers.CSV_COLUMNS); Parquet, a folder of shards with one row per
    image (writers.image_row), skipped images included with their reason. resume: predict only the images a
    Parquet folder lacks. ray: an OnRay (otxlite.core.ray_cluster) to predict on Ray Data. Returns the output path.
    """
    fmt = writers.output_format(output, output_format)
    files, root = image_files(input_path)
    names = [file_name(path, root) for path in files]
    predictor, predicted_rows = row_source(model_path, device, ray)
    threshold = confidence_threshold(threshold, predictor.confidence_threshold)
    schema = LabelSchema.of(predictor.schema)
    writer = writers.open_writer(output, fmt, writers.run_record(model_path, threshold, input_path, schema,
                                                  {name: i + 1 for i, name in enumerate(names)}, root), resume)
    todo = [i for i, name in enumerate(names) if name not in writer.done]
    if writer.done:
        log.info("%s holds %d of the %d images; predicting the other %d.", output, len(files) - len(todo), len(files),
                 len(todo))
    labels = schema.name_of
    paths = dict(zip(names, files))
    started, skipped = time.perf_counter(), 0
    with tqdm(total=len(todo), unit="image", disable=None) as progress:
        try:
            for rows in predicted_rows([files[i] for i in todo], [names[i] for i in todo], threshold, labels,
                                       batch_size):
                for row in rows:
                    if row["skipped"] is not None:
                        warn_skipped(paths[row["file_name"]], row["skipped"])
                        skipped += 1
                writer.add(rows)
                progress.update(len(rows))
        except BaseException:  # Ctrl-C or an error: keep what was predicted (a Parquet shard) for --resume
            writer.flush()
            raise
    detections = writer.close()
    seconds = time.perf_counter() - started
    if skipped:
        log.warning("Skipped %d unreadable image(s) of %d.", skipped, len(todo))
    log.info("%d images, %d detections scoring above %g, %.1f images/s -> %s", len(todo), detections, threshold,
             len(todo) / seconds if seconds else 0, output)
    return Path(output)


def row_source(model_path, device, ray):
    """(predictor, rows): the model loaded in this process, or on Ray Data with ray (an OnRay), and
    rows(files, names, threshold, labels, batch_size), which yields its image_row/skipped_row lists batch by batch."""
    if ray is None:
        predictor = load_predictor(model_path, device, throughput=True)
        return predictor, partial(local_rows, predictor)
    try:
        from otxlite.inference.predict_ray import RayPredictor
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(("ray", "pyarrow")):
            raise
        raise OtxliteError("--engine ray needs Ray Data: pip install 'otxlite[ray]'.") from None
    predictor = RayPredictor(model_path, device, ray)
    return predictor, predictor.rows


def local_rows(predictor, files, names, threshold, labels, batch_size):
    """predict_files' rows (lists of image_row/skipped_row), batch by batch, from predictor in this process."""
    masks = task_of(predictor.schema).masks
    rows = []
    for index, _, image, found in detect_images(predictor, files, batch_size, warn=False):
        rows.append(skipped_row(names[index], found, masks) if image is None
                    else image_row(names[index], found, image.shape[:2], threshold, labels))
        if len(rows) == batch_size:
            yield rows
            rows = []
    if rows:
        yield rows


