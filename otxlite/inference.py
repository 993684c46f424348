"""`otxlite predict`: detections (with RLE masks for instance segmentation) for a folder, a glob or a list of
images, as COCO results JSON, CSV or Parquet shards; in this process, or on Ray Data (see predict_ray)."""

import glob
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from otxlite import OtxliteError, predictions
from otxlite.formats.base import IMAGE_SUFFIXES, DataError, decode_reporting_truncation, images_in
from otxlite.predictions import image_row, skipped_row
from otxlite.predictors import load_predictor
from otxlite.tasks import task_of

log = logging.getLogger("otxlite")


@dataclass(frozen=True)
class RayWorkers:
    """`otxlite predict --engine ray`: how many actors run the model (default: one per CPU of the cluster, or
    per GPU over gpus_per_worker), and the Ray cluster to join (default: a local Ray of otxlite's own)."""
    workers: int | None = None
    gpus_per_worker: float = 0
    address: str | None = None


def predict_files(model_path, input_path, output, output_format=None, threshold=None, batch_size=8, device="auto",
                  resume=False, ray=None):
    """Write the detections scoring above threshold (default: the model's) for every image of input_path.

    JSON is a COCO results list (image_id numbers the files in sorted order from 1; file_name, category_name
    added); CSV has one detection a row (predictions.CSV_COLUMNS); Parquet, a folder of shards with one row per
    image (predictions.image_row), skipped images included with their reason. resume: predict only the images a
    Parquet folder lacks. ray: a RayWorkers to predict on Ray Data. Returns the output path.
    """
    fmt = predictions.output_format(output, output_format)
    files, root = image_files(input_path)
    names = [file_name(path, root) for path in files]
    if ray is not None:
        try:
            from otxlite.predict_ray import RayPredictor
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith(("ray", "pyarrow")):
                raise
            raise OtxliteError("--engine ray needs Ray Data: pip install 'otxlite[ray]'.") from None
        predictor = RayPredictor(model_path, device, ray)
        predicted_rows = predictor.rows
    else:
        predictor = load_predictor(model_path, device, throughput=True)
        predicted_rows = partial(local_rows, predictor)
    threshold = predictor.confidence_threshold if threshold is None else threshold
    task = predictor.schema.get("task", "detection")
    writer = predictions.open_writer(output, fmt, predictions.run_record(model_path, threshold, input_path, task,
                                                  {name: i + 1 for i, name in enumerate(names)}), resume)
    todo = [i for i, name in enumerate(names) if name not in writer.done]
    if writer.done:
        log.info("%s holds %d of the %d images; predicting the other %d.", output, len(files) - len(todo), len(files),
                 len(todo))
    labels = {label["id"]: label["name"] for label in predictor.schema["labels"]}
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


def warn_skipped(file, reason):
    log.warning("%s: unreadable image (%s); skipped.", file, reason)


def image_files(path):
    """(files, root): one image file, a folder's images (recursively), the images a glob pattern matches, or those
    a .txt file lists one a line (relative to the list's folder); sorted, except a list's, which keeps its order.
    File names in the output are relative to root."""
    text = str(path)
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        files = list(dict.fromkeys(path.parent / line for line in listed if line and not line.startswith("#")))
        if not files:
            raise OtxliteError(f"{path}: lists no images. Give one image path a line.")
        if not any(file.exists() for file in files):
            raise OtxliteError(f"{path}: none of the {len(files)} files it lists exists (e.g. {files[0]}). Paths "
                               f"are relative to the list's folder, {path.parent}.")
        return files, path.parent
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise OtxliteError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}), a folder, a glob "
                               f"pattern or a .txt list of images.")
        return [path], path.parent
    if path.is_dir():
        files = images_in(path)
        if not files:
            raise OtxliteError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
        return files, path
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
                       and Path(p).is_file())
        if not files:
            raise OtxliteError(f"{text}: the pattern matches no images ({', '.join(IMAGE_SUFFIXES)}).")
        fixed = [part for part in Path(text).parts[:-1]]
        while fixed and glob.has_magic(fixed[-1]):
            fixed.pop()
        return files, Path(*fixed) if fixed else Path(".")
    raise OtxliteError(f"{path}: not found.")


def file_name(path, root):
    """path as the output names it: relative to root when under it, else as given."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def decode(path):
    """An HxWx3 uint8 RGB array as viewers show the image, or the error text for a file that cannot be decoded
    (a truncated file is decoded with its missing end grey, and a warning names it)."""
    try:
        image, truncated = decode_reporting_truncation(path)
    except DataError as err:
        return str(err).removeprefix(f"{path}: ")
    except (OSError, SyntaxError, ValueError) as err:
        return str(err)
    if truncated:
        log.warning("%s: the file ends early (%s); decoded with its missing part grey.", path, truncated)
    return image


def detect_images(predictor, files, batch_size, workers=2, warn=True):
    """(index, file, RGB array, detections) per file, batch by batch.

    Threads decode the next batch while the model runs on this one (PIL releases the GIL while decoding).
    An unreadable file is skipped with a warning naming it (counted at the end), or with warn=False given as
    (index, file, None, the reason).
    """
    batches = [range(start, min(start + batch_size, len(files))) for start in range(0, len(files), batch_size)]
    skipped = 0
    with ThreadPoolExecutor(workers) as pool:
        upcoming = [pool.submit(decode, files[i]) for i in batches[0]] if batches else []
        for number, batch in enumerate(batches):
            decoded = [future.result() for future in upcoming]
            if number + 1 < len(batches):
                upcoming = [pool.submit(decode, files[i]) for i in batches[number + 1]]
            readable = [(index, image) for index, image in zip(batch, decoded) if not isinstance(image, str)]
            for index, error in zip(batch, decoded):
                if isinstance(error, str):
                    if warn:
                        warn_skipped(files[index], error)
                        skipped += 1
                    else:
                        yield index, files[index], None, error
            found = predictor([image for _, image in readable]) if readable else []
            for (index, image), detections in zip(readable, found):
                yield index, files[index], image, detections
    if skipped:
        log.warning("Skipped %d unreadable image(s) of %d.", skipped, len(files))
