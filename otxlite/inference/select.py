"""`otxlite select`: rank unlabelled images by how much labelling them would teach the model (active learning),
and write the budget's picks as a list of images that `predict --input`, `data.yaml`'s image-list and labelling
tools read.

An image's score is the uncertainty of the model's detections on it (the rule), on any model file and engine
(rows come from predict's row_source). Walking down the ranking, an image that looks like one already picked (a
near-duplicate: a video's next frame, a re-shot part) waits until the images unlike any pick are taken.
"""

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.core.errors import ArgumentError, DataError, OtxliteError
from otxlite.core.files import write_atomic
from otxlite.core.labels import LabelSchema
from otxlite.data.formats.base import decode_reporting_truncation
from otxlite.inference.images import file_name, image_files, warn_skipped
from otxlite.inference.predict import row_source

log = logging.getLogger("otxlite")
MIN_SCORE = 0.05  # detections scoring under this are the background's, not uncertain objects
THUMBNAIL = 16  # near-duplicates are compared as THUMBNAIL x THUMBNAIL grey images...
DUPLICATE_DISTANCE = 0.02  # ...whose mean absolute difference (0..1, brightness-normalised) is under this
RULES = ("entropy", "least_confidence", "random")


def binary_entropy(p):
    """The entropy (bits) of a detection scoring p: 1 at 0.5, 0 at 0 and 1."""
    p = min(max(float(p), 1e-9), 1 - 1e-9)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def uncertainty(scores, rule):
    """An image's score under rule from its detections' scores (those of MIN_SCORE or more; none: 0). entropy: the
    summed entropy of its detections, so several doubtful objects outrank one; least_confidence: how doubtful its
    most doubtful detection is, 2 x min(p, 1 - p) (1 at p 0.5)."""
    scores = [s for s in scores if s >= MIN_SCORE]
    if not scores:
        return 0.0
    if rule == "entropy":
        return sum(binary_entropy(s) for s in scores)
    return max(2 * min(s, 1 - s) for s in scores)


def thumbnail(path):
    """The image as a THUMBNAIL-square grey array with its mean brightness removed, or None if unreadable."""
    try:
        image, _ = decode_reporting_truncation(path)
    except (DataError, OSError, SyntaxError, ValueError):  # unreadable now: no duplicate check for it
        return None
    grey = np.asarray(Image.fromarray(image).convert("L").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR),
                      dtype=np.float32) / 255
    return grey - grey.mean()


def ranked(scores, files, budget, seed=0):
    """Indices of files in pick order: by score (highest first; ties by file order), each near-duplicate of an
    earlier pick moved after the budget's picks. With all scores None (the random rule), a seeded shuffle."""
    if all(score is None for score in scores):
        return list(np.random.default_rng(seed).permutation(len(files)))
    order = sorted(range(len(files)), key=lambda i: -scores[i])
    picked, waiting, kept = [], [], []
    for index in order:
        if len(picked) >= budget:
            break
        small = thumbnail(files[index])
        if small is not None and any(np.abs(small - other).mean() < DUPLICATE_DISTANCE for other in kept):
            waiting.append(index)
            continue
        picked.append(index)
        if small is not None:
            kept.append(small)
    chosen = set(picked) | set(waiting)
    return picked + waiting + [i for i in order if i not in chosen]


def select_images(model_path, input_path, budget, output, rule="entropy", batch_size=8, device="auto", ray=None,
                  seed=0):
    """Write the budget's picks of input_path's images to output (one path a line, relative to output's folder),
    best first; returns [(file, score)] of the picks. ray: an OnRay to predict on Ray Data."""
    if rule not in RULES:
        raise ArgumentError(f"--rule {rule}: choose one of {', '.join(RULES)}.")
    if budget < 1:
        raise ArgumentError(f"--budget {budget}: give the number of images to pick (1 or more).")
    files, root = image_files(input_path)
    if budget > len(files):
        log.warning("--budget %d is more than the %d images of %s: all of them are ranked.", budget, len(files),
                    input_path)
    names = [file_name(path, root) for path in files]
    scores = [None] * len(files)
    if rule != "random":
        predictor, rows = row_source(model_path, device, ray)
        labels = LabelSchema.of(predictor.schema).name_of
        index_of, skipped = {name: i for i, name in enumerate(names)}, 0
        for batch in rows(files, names, MIN_SCORE, labels, batch_size):
            for row in batch:
                if row["skipped"] is not None:
                    warn_skipped(files[index_of[row["file_name"]]], row["skipped"])
                    skipped += 1
                else:
                    scores[index_of[row["file_name"]]] = uncertainty(row["score"], rule)
        if skipped:
            log.warning("Skipped %d unreadable image(s) of %d; they are not picked.", skipped, len(files))
    readable = [i for i, score in enumerate(scores) if score is not None or rule == "random"]
    if not readable:
        raise OtxliteError(f"{input_path}: none of its {len(files)} images could be read.")
    order = [readable[i] for i in ranked([scores[i] for i in readable], [files[i] for i in readable],
                                         min(budget, len(readable)), seed)]
    picks = order[:budget]
    output = Path(output)
    lines = "".join(f"{os.path.relpath(files[i].absolute(), output.absolute().parent)}\n" for i in picks)
    write_atomic(output, lambda f: f.write(lines.encode()))
    shown = ", ".join(f"{names[i]} {scores[i]:.2f}" for i in picks[:3]) if rule != "random" else ""
    log.info("Picked %d of %d images (%s)%s -> %s", len(picks), len(files), rule, f": {shown} ..." if shown else "",
             output)
    return [(files[i], scores[i]) for i in picks]
