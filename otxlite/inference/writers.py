"""Where `otxlite predict` writes: one row per image, in COCO results JSON, CSV, or a folder of Parquet shards.

Every engine builds the same rows (`image_row`), so a file's predictions do not depend on which engine made them.
JSON and CSV are written once, at the end. A Parquet folder grows a shard at a time, each written atomically, so a
run killed half-way keeps every shard it wrote, and `resume` skips the images they hold.
"""

import csv
import io
import logging
import time
from pathlib import Path

from otxlite.core.errors import ArgumentError, OtxliteError
from otxlite.core.files import make_folder, output_file, read_json, write_atomic, write_json
from otxlite.core.thresholds import kept
from otxlite.inference.annotations import FORMATS as ANNOTATION_FORMATS
from otxlite.inference.annotations import AnnotationFolder

log = logging.getLogger("otxlite")
CSV_COLUMNS = ("file_name", "category_id", "category_name", "score", "xmin", "ymin", "xmax", "ymax")
FORMATS = ("json", "csv", "parquet", *ANNOTATION_FORMATS)  # the last: pre-annotations, see annotations.py
RUN_FILE = "_otxlite_predict.json"  # in a Parquet folder: what made it (readers skip names starting with _)
SHARD_SECONDS = 5  # a Parquet shard is written at least this often while images are predicted...
SHARD_IMAGES = 1000  # ...and holds at most this many images


def detection_record(image_id, file_name, box, score, label, names, rle=None):
    """One COCO result; with an instance mask, its `segmentation` as RLE (counts as text, as pycocotools reads it)."""
    from otxlite.data.formats.shapes import as_text

    x1, y1, x2, y2 = (float(v) for v in box)
    return {"image_id": image_id, "file_name": file_name, "category_id": label, "category_name": names[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(score), 5),
            **({"segmentation": as_text(rle)} if rle is not None else {})}


def image_row(file_name, found, image_size, threshold, names):
    """One image's detections scoring above threshold as a row: file_name, height, width, skipped (None), and a
    list per field of the COCO results (category_id, category_name, score, bbox as x, y, w, h, and for masks
    segmentation: the RLE counts, of an image height x width)."""
    keep = kept(found["scores"], threshold)
    records = [detection_record(0, file_name, found["boxes"][i], found["scores"][i], int(found["labels"][i]), names,
                                found["rles"][i] if "rles" in found else None) for i in keep]
    row = {"file_name": file_name, "height": int(image_size[0]), "width": int(image_size[1]), "skipped": None,
           **{key: [r[key] for r in records] for key in ("category_id", "category_name", "score", "bbox")}}
    if "rles" in found:
        row["segmentation"] = [r["segmentation"]["counts"] for r in records]
    return row


def skipped_row(file_name, reason, masks):
    """The row of an image that was not predicted, with the reason (unreadable, too large)."""
    return {"file_name": file_name, "height": None, "width": None, "skipped": reason, "category_id": [],
            "category_name": [], "score": [], "bbox": [], **({"segmentation": []} if masks else {})}


def row_records(row, image_id):
    """A row's COCO results, as `otxlite predict` writes them to JSON."""
    records = []
    for i, (label, name, score, bbox) in enumerate(zip(row["category_id"], row["category_name"], row["score"],
                                                         row["bbox"])):
        record = {"image_id": image_id, "file_name": row["file_name"], "category_id": int(label),
                  "category_name": name, "bbox": [float(v) for v in bbox], "score": float(score)}
        if row.get("segmentation") is not None:
            record["segmentation"] = {"size": [int(row["height"]), int(row["width"])],
                                      "counts": row["segmentation"][i]}
        records.append(record)
    return records


def output_format(output, asked=None):
    """The format asked for, else by the output's suffix: .csv, .json, none (a folder) or .parquet -> Parquet."""
    if asked:
        return asked
    suffix = Path(output).suffix.lower()
    return {".csv": "csv", ".json": "json", "": "parquet", ".parquet": "parquet"}.get(suffix, "json")


def open_writer(output, fmt, run, resume=False):
    """The writer for output in fmt; run (model, threshold, input) is recorded in a Parquet folder and must match
    the recorded one to resume it."""
    if fmt not in FORMATS:
        raise ArgumentError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    if fmt == "parquet":
        return ParquetShards(output, run, resume)
    if resume:
        raise ArgumentError("--resume continues a Parquet output folder (e.g. --output predictions/); JSON, CSV "
                            "and annotation files are written once, at the end.")
    if fmt in ANNOTATION_FORMATS:
        return AnnotationFolder(output, fmt, run)
    return ResultsFile(output_file(output), fmt, run["file_ids"])


class ResultsFile:
    """COCO results JSON or CSV, written at close in the order of the input's files (image_id numbers them)."""

    def __init__(self, path, fmt, file_ids):
        self.path, self.format, self.file_ids = path, fmt, file_ids
        self.rows, self.done = [], set()

    def add(self, rows):
        self.rows += rows

    def flush(self):
        """Nothing: the file is written once, whole, at close."""

    def close(self):
        self.rows.sort(key=lambda row: self.file_ids[row["file_name"]])
        records = [r for row in self.rows for r in row_records(row, self.file_ids[row["file_name"]])]
        if self.format == "csv":
            write_csv(self.path, records)
        else:
            write_json(self.path, records)
        return sum(len(row["score"]) for row in self.rows)


def write_csv(path, records):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        x, y, w, h = r["bbox"]
        writer.writerow([r["file_name"], r["category_id"], r["category_name"], r["score"], x, y,
                         round(x + w, 2), round(y + h, 2)])
    write_atomic(path, lambda f: f.write(buffer.getvalue().encode()))


class ParquetShards:
    """A folder of part-NNNNNN.parquet shards, one row per image (see image_row), each shard written atomically
    at most SHARD_SECONDS after its first row arrived. done: the file_names the folder already holds."""

    def __init__(self, folder, run, resume):
        self.pq, self.pa = parquet()
        self.folder, self.buffer, self.flushed, self.detections = Path(folder), [], time.monotonic(), 0
        shards = sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []
        others = [p.name for p in self.folder.iterdir() if p.name != RUN_FILE and not p.match("part-*.parquet")
                  and not p.match(".part-*.tmp")] if self.folder.is_dir() else []
        if others:
            raise OtxliteError(f"{self.folder} holds other files ({', '.join(sorted(others)[:3])}); Parquet shards go "
                               f"into a new or empty folder. Give another --output, or a .json or .csv file.")
        recorded = self.folder / RUN_FILE
        if not resume and (shards or recorded.exists()):
            raise OtxliteError(f"{self.folder} holds the predictions of an earlier run. Pass --resume to predict "
                               f"only the images it lacks, or give another --output.")
        if resume and recorded.exists():
            earlier = read_json(recorded)
            changed = [key for key in ("model", "threshold") if earlier.get(key) != run[key]]
            if changed:
                raise OtxliteError(f"{self.folder}: --resume needs the same {' and '.join(changed)} as the run that "
                                   f"wrote it ({', '.join(f'{k} {earlier.get(k)}' for k in changed)}); give another "
                                   f"--output for a new run.")
        make_folder(self.folder)
        for stale in self.folder.glob(".part-*.tmp"):  # a shard a killed run was writing: never renamed, not done
            stale.unlink()
        self.done = set()
        for shard in shards:
            self.done.update(self.pq.read_table(shard, columns=["file_name"]).column("file_name").to_pylist())
        self.next_shard = 1 + max((int(s.stem.split("-")[1]) for s in shards), default=-1)
        write_json(recorded, {key: run[key] for key in ("model", "threshold", "input", "task")})
        self.masks = run["task"] == "instance_segmentation"

    def add(self, rows):
        self.buffer += rows
        if len(self.buffer) >= SHARD_IMAGES or time.monotonic() - self.flushed >= SHARD_SECONDS:
            self.flush()

    def flush(self):
        if self.buffer:
            table = self.pa.Table.from_pylist(self.buffer, schema=row_schema(self.pa, self.masks))
            write_atomic(self.folder / f"part-{self.next_shard:06d}.parquet", lambda f: self.pq.write_table(table, f))
            self.next_shard += 1
            self.detections += sum(len(row["score"]) for row in self.buffer)
        self.buffer, self.flushed = [], time.monotonic()

    def close(self):
        self.flush()
        return self.detections


def row_schema(pa, masks):
    """The Arrow schema of image_row's rows."""
    fields = [("file_name", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("skipped", pa.string()),
              ("category_id", pa.list_(pa.int32())), ("category_name", pa.list_(pa.string())),
              ("score", pa.list_(pa.float64())), ("bbox", pa.list_(pa.list_(pa.float64(), 4)))]
    return pa.schema(fields + ([("segmentation", pa.list_(pa.string()))] if masks else []))


def parquet():
    """(pyarrow.parquet, pyarrow), or one error saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ModuleNotFoundError:
        raise OtxliteError("Parquet output needs pyarrow: pip install pyarrow (or 'otxlite[ray]').") from None
    return pyarrow.parquet, pyarrow


def read_predictions(folder):
    """A Parquet folder's rows (dicts, see image_row), sorted by file_name."""
    pq, _ = parquet()
    shards = sorted(Path(folder).glob("part-*.parquet"))
    return sorted((row for shard in shards for row in pq.read_table(shard).to_pylist()), key=lambda r: r["file_name"])


def run_record(model, threshold, input_path, schema, file_ids, root):
    """What a writer needs to know of the run: root is the folder file_ids' names are relative to."""
    return {"model": str(Path(model).resolve()), "threshold": threshold, "input": str(input_path),
            "task": schema.task, "schema": schema, "file_ids": file_ids, "root": str(root)}

