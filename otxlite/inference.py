"""`otxlite predict`: detections (with RLE masks for instance segmentation) for an image or a folder of images,
as COCO results JSON or CSV."""

import csv
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from otxlite import OtxliteError
from otxlite.files import output_file, write_atomic, write_json
from otxlite.formats.base import IMAGE_SUFFIXES, DataError, decode_reporting_truncation, images_in
from otxlite.formats.shapes import as_text
from otxlite.predictors import load_predictor

log = logging.getLogger("otxlite")
CSV_COLUMNS = ("file_name", "category_id", "category_name", "score", "xmin", "ymin", "xmax", "ymax")


def predict_files(model_path, input_path, output, output_format=None, threshold=None, batch_size=8, device="auto"):
    """Write the detections scoring above threshold (default: the model's) for every image under input_path.

    JSON is a COCO results list (image_id numbers the files in sorted order from 1; file_name, category_name
    added); CSV has one detection a row (CSV_COLUMNS). Returns the output path.
    """
    output = output_file(output)
    predictor = load_predictor(model_path, device, throughput=True)
    threshold = predictor.confidence_threshold if threshold is None else threshold
    files, root = image_files(input_path)
    output_format = output_format or ("csv" if output.suffix.lower() == ".csv" else "json")
    names = {label["id"]: label["name"] for label in predictor.schema["labels"]}
    records, started = [], time.perf_counter()
    progress = tqdm(detect_images(predictor, files, batch_size), total=len(files), unit="image", disable=None)
    for index, path, _, found in progress:
        for i, (box, score, label) in enumerate(zip(found["boxes"], found["scores"], found["labels"])):
            if score > threshold:
                records.append(detection_record(index + 1, path.relative_to(root).as_posix(), box, score,
                                                int(label), names, found["rles"][i] if "rles" in found else None))
    seconds = time.perf_counter() - started
    if output_format == "csv":
        write_csv(output, records)
    else:
        write_json(output, records)
    log.info("%d images, %d detections scoring above %g, %.1f images/s -> %s", len(files), len(records), threshold,
             len(files) / seconds, output)
    return output


def detection_record(image_id, file_name, box, score, label, names, rle=None):
    """One COCO result; with an instance mask, its `segmentation` as RLE (counts as text, as pycocotools reads it)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"image_id": image_id, "file_name": file_name, "category_id": label, "category_name": names[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(score), 5),
            **({"segmentation": as_text(rle)} if rle is not None else {})}


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
        files = images_in(path)
        if not files:
            raise OtxliteError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
        return files, path
    raise OtxliteError(f"{path}: not found.")


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


def detect_images(predictor, files, batch_size, workers=2):
    """(index, file, RGB array, detections) per readable file, batch by batch.

    Threads decode the next batch while the model runs on this one (PIL releases the GIL while decoding).
    An unreadable file is skipped with a warning naming it, and counted at the end.
    """
    batches = [range(start, min(start + batch_size, len(files))) for start in range(0, len(files), batch_size)]
    skipped = 0
    with ThreadPoolExecutor(workers) as pool:
        upcoming = [pool.submit(decode, files[i]) for i in batches[0]]
        for number, batch in enumerate(batches):
            decoded = [future.result() for future in upcoming]
            if number + 1 < len(batches):
                upcoming = [pool.submit(decode, files[i]) for i in batches[number + 1]]
            readable = [(index, image) for index, image in zip(batch, decoded) if not isinstance(image, str)]
            for index, error in zip(batch, decoded):
                if isinstance(error, str):
                    log.warning("%s: unreadable image (%s); skipped.", files[index], error)
                    skipped += 1
            found = predictor([image for _, image in readable]) if readable else []
            for (index, image), detections in zip(readable, found):
                yield index, files[index], image, detections
    if skipped:
        log.warning("Skipped %d unreadable image(s) of %d.", skipped, len(files))
