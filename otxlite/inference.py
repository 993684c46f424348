"""`otxlite predict`: detections for an image or a folder of images, as COCO results JSON or CSV."""

import csv
import io
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from otxlite import OtxliteError
from otxlite.files import write_atomic, write_json
from otxlite.formats.base import IMAGE_SUFFIXES
from otxlite.predictors import load_predictor

log = logging.getLogger("otxlite")
CSV_COLUMNS = ("file_name", "category_id", "category_name", "score", "xmin", "ymin", "xmax", "ymax")


def predict_files(model_path, input_path, output, output_format=None, threshold=None, batch_size=8, device="auto"):
    """Write the detections scoring above threshold (default: the model's) for every image under input_path.

    JSON is a COCO results list (image_id numbers the files in sorted order from 1; file_name, category_name
    added); CSV has one detection a row (CSV_COLUMNS). Returns the output path.
    """
    predictor = load_predictor(model_path, device, throughput=True)
    threshold = predictor.confidence_threshold if threshold is None else threshold
    files, root = image_files(input_path)
    output = Path(output)
    output_format = output_format or ("csv" if output.suffix.lower() == ".csv" else "json")
    names = {label["id"]: label["name"] for label in predictor.schema["labels"]}
    records, started = [], time.perf_counter()
    progress = tqdm(detect_images(predictor, files, batch_size), total=len(files), unit="image", disable=None)
    for index, path, _, found in progress:
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
            if score > threshold:
                records.append(detection_record(index + 1, path.relative_to(root).as_posix(), box, score,
                                                int(label), names))
    seconds = time.perf_counter() - started
    if output_format == "csv":
        write_csv(output, records)
    else:
        write_json(output, records)
    log.info("%d images, %d detections scoring above %g, %.1f images/s -> %s", len(files), len(records), threshold,
             len(files) / seconds, output)
    return output


def detection_record(image_id, file_name, box, score, label, names):
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"image_id": image_id, "file_name": file_name, "category_id": label, "category_name": names[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(score), 5)}


def write_csv(path, records):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        x, y, w, h = r["bbox"]
        writer.writerow([r["file_name"], r["category_id"], r["category_name"], r["score"], x, y,
                         round(x + w, 2), round(y + h, 2)])
    write_atomic(path, lambda f: f.write(buffer.getvalue().encode()))


def image_files(path):
    """(files, root): one image file, or a folder's images (recursively, sorted), with the folder they are under."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise OtxliteError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}).")
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise OtxliteError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
        return files, path
    raise OtxliteError(f"{path}: not found.")


class DecodedImages(torch.utils.data.Dataset):
    """(index, HxWx3 uint8 RGB array) per file, or (index, error text) for a file that cannot be decoded."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        try:
            with Image.open(self.files[index]) as image:
                return index, np.array(image.convert("RGB"))
        except (OSError, SyntaxError) as err:
            return index, str(err)


def detect_images(predictor, files, batch_size, workers=None):
    """(index, file, RGB array, detections) per readable file, images decoded in worker processes.

    An unreadable file is skipped with a warning naming it (and counted at the end).
    """
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(DecodedImages(files), batch_size=batch_size, num_workers=workers,
                                         collate_fn=list)
    skipped = 0
    for batch in loader:
        readable = [(index, image) for index, image in batch if not isinstance(image, str)]
        for index, error in batch:
            if isinstance(error, str):
                log.warning("%s: unreadable image (%s); skipped.", files[index], error)
                skipped += 1
        found = predictor([image for _, image in readable]) if readable else []
        for (index, image), detections in zip(readable, found):
            yield index, files[index], image, detections
    if skipped:
        log.warning("Skipped %d unreadable image(s) of %d.", skipped, len(files))
