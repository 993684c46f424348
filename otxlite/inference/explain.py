"""`otxlite explain`: per-class saliency maps of a model on images, as overlays and as raw maps."""

import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import resize

from otxlite.core.errors import ArgumentError
from otxlite.core.files import write_atomic
from otxlite.core.thresholds import confidence_threshold
from otxlite.core.visualize import draw_detections
from otxlite.inference.backends import load_predictor
from otxlite.inference.images import detect_images, file_name, image_files

log = logging.getLogger("otxlite")
SHOWN_CLASSES = 5  # the classes whose highest probability each image's log line gives, hottest first


def explain(model_path, input_path, output, target_classes=None, threshold=None, device="auto"):
    """For each image at input_path, a folder under output with saliency.npy (the raw maps: [classes, h, w]
    probabilities, label_schema.json's classes in order) and one overlay PNG per target class (default: all),
    the class's detections above threshold (default: the model's) drawn on it; returns output.

    The caller (the API's Engine.explain) has checked that output is none of the inputs and lies in none of them.
    """
    output = Path(output)
    predictor = load_predictor(model_path, device, explain=True)
    threshold = confidence_threshold(threshold, predictor.confidence_threshold)
    labels = predictor.schema["labels"]
    names = [label["name"] for label in labels]
    unknown = [name for name in target_classes or () if name not in names]
    if unknown:
        raise ArgumentError(f"--target-classes {', '.join(unknown)}: the model's classes are {', '.join(names)}.")
    targets = [index for index, name in enumerate(names) if not target_classes or name in target_classes]
    files, root = image_files(input_path)
    for _, path, image, detections in detect_images(predictor, files, batch_size=1):
        name = Path(file_name(path, root))
        folder = output.joinpath(*[part for part in name.parent.parts if part not in ("..", "/")],
                                 f"{name.stem}_{name.suffix.lstrip('.')}")
        maps = detections["saliency"]
        write_atomic(folder / "saliency.npy", lambda f: np.save(f, maps.astype(np.float32)))
        for index in targets:
            label = labels[index]
            keep = detections["labels"] == label["id"]
            own = {key: [rle for rle, kept in zip(value, keep) if kept] if key == "rles" else value[keep]
                   for key, value in detections.items() if key != "saliency"}
            picture = draw_detections(overlay(image, maps[index]), own, predictor.schema, threshold)
            write_atomic(folder / f"{label['id']}-{safe_name(label['name'])}.png",
                         lambda f: picture.save(f, format="PNG"))
        hottest = sorted(targets, key=lambda i: -float(maps[i].max()))[:SHOWN_CLASSES]
        log.info("%s: maps of %d class(es), highest %s%s -> %s", path, len(targets),
                 ", ".join(f"{names[i]} {maps[i].max():.2f}" for i in hottest),
                 ", ..." if len(targets) > SHOWN_CLASSES else "", folder)
    return output


def overlay(image, saliency_map, alpha=0.5):
    """image (HxWx3 uint8) blended with the map, stretched to its own range (OTX's display) and coloured
    with matplotlib's jet: red where the class is likeliest."""
    from matplotlib import colormaps

    low, high = float(saliency_map.min()), float(saliency_map.max())
    scaled = (saliency_map - low) / (high - low) if high > low else np.zeros_like(saliency_map)
    full = resize(torch.from_numpy(np.ascontiguousarray(scaled))[None], list(image.shape[:2]), antialias=False)[0]
    heat = colormaps["jet"](full.clamp(0, 1).numpy())[..., :3] * 255
    return Image.fromarray((image * (1 - alpha) + heat * alpha).round().astype(np.uint8))


def safe_name(name):
    """A class name as a file name: characters other than letters, digits, '.', '_' and '-' become '_'."""
    return re.sub(r"[^\w.-]", "_", name)
