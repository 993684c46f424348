"""`otxlite demo`: draw a model's detections on images or a video, to look at them."""

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from otxlite.core.errors import OtxliteError
from otxlite.core.files import make_folder, write_atomic
from otxlite.core.labels import LabelSchema
from otxlite.core.thresholds import confidence_threshold, kept
from otxlite.core.visualize import draw_detections
from otxlite.inference.backends import load_predictor
from otxlite.inference.images import detect_images, file_name, image_files

log = logging.getLogger("otxlite")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def demo(model_path, input_path, output, threshold=None, device="auto"):
    """Annotated copies of the image, the folder's images or the video at input_path; returns the output folder.

    Boxes scoring above threshold (default: the model's) are drawn in the label colours with name and score.
    The caller (the API's Engine.demo) has checked that output is none of the inputs and lies in none of them.
    """
    input_path = Path(input_path)
    output = Path(output)
    predictor = load_predictor(model_path, device)
    threshold = confidence_threshold(threshold, predictor.confidence_threshold)
    if input_path.is_file() and input_path.suffix.lower() in VIDEO_SUFFIXES:
        demo_video(predictor, input_path, output / f"{input_path.stem}.mp4", threshold)
        return output
    files, root = image_files(input_path)
    for _, path, image, detections in detect_images(predictor, files, batch_size=1):
        # a listed image outside the list's folder keeps its path below output, never above it
        target = output.joinpath(*[part for part in Path(file_name(path, root)).parts if part not in ("..", "/")])
        save_image(draw_detections(Image.fromarray(image), detections, predictor.schema, threshold), target)
        log.info("%s: %s -> %s", path, summary(detections, threshold, predictor.schema), target)
    return output


def summary(detections, threshold, schema):
    names = LabelSchema.of(schema).name_of
    counts = Counter(names[int(detections["labels"][i])] for i in kept(detections["scores"], threshold))
    if not counts:
        return f"no detections scoring above {threshold:g}"
    return f"{sum(counts.values())} detections scoring above {threshold:g} (" + \
        ", ".join(f"{name} {counts[name]}" for name in names.values() if name in counts) + ")"


def save_image(image, path):
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    write_atomic(path, lambda f: image.save(f, format=image_format))


def demo_video(predictor, path, target, threshold):
    """The video with detections drawn on every frame, written as MP4 (mp4v) at the same frame rate."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OtxliteError(f"{path}: cannot open the video (not a video, or a codec OpenCV cannot read).")
    make_folder(target.parent)
    partial = target.with_name(f".{target.stem}.partial.mp4")  # OpenCV picks the container by the suffix
    fps, frames, found, writer = capture.get(cv2.CAP_PROP_FPS) or 25.0, 0, 0, None
    try:
        with tqdm(total=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None, unit="frame", disable=None) as progress:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = np.ascontiguousarray(frame[:, :, ::-1])
                detections = predictor([rgb])[0]
                drawn = np.asarray(draw_detections(Image.fromarray(rgb), detections, predictor.schema, threshold))
                if writer is None:
                    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (rgb.shape[1], rgb.shape[0]))
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                frames += 1
                found += len(kept(detections["scores"], threshold))
                progress.update()
        if writer is None:
            raise OtxliteError(f"{path}: no frame could be read from the video.")
        writer.release()
        os.replace(partial, target)
    finally:  # a failed or interrupted run leaves no partial video behind
        capture.release()
        if writer is not None:
            writer.release()
        partial.unlink(missing_ok=True)
    log.info("%s: %d frames, %.1f detections a frame scoring above %g -> %s", path, frames, found / frames,
             threshold, target)
