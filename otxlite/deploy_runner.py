"""Detect objects with the model in this package: python run.py IMAGE_OR_FOLDER [--threshold T] [--json OUT]

Needs only openvino, numpy and pillow (pip install -r requirements.txt). Prints one line per image; --json
writes the detections as COCO results (image_id, file_name, category_id, category_name, bbox as x, y, w, h,
score), as `otxlite predict` does. (This file is otxlite's deploy runner, copied into each package as run.py.)
"""

import argparse
import json
from pathlib import Path

import numpy as np
import openvino
from PIL import Image

MODEL = Path(__file__).resolve().parent / "model"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Detector:
    """The packaged OpenVINO model: an RGB image in, boxes in its own pixels, scores and label ids out."""

    def __init__(self, folder=MODEL, device="CPU"):
        self.config = json.loads((folder / "config.json").read_text())
        self.labels = {label["id"]: label["name"] for label in
                       json.loads((folder / "label_schema.json").read_text())["labels"]}
        core = openvino.Core()  # f32 as otxlite runs it: the same detections as `otxlite predict`
        self.model = core.compile_model(core.read_model(folder / "openvino.xml"), device,
                                        {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, image):
        """HxWx3 uint8 RGB array -> boxes [N, 4] (x1, y1, x2, y2), scores [N], label ids [N]."""
        tensor = np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32) / 255
        result = self.model([tensor])
        boxes, scores, labels = (result[output] for output in self.model.outputs)
        return boxes.reshape(-1, 4), scores, labels


def image_files(path):
    if path.is_file():
        return [path], path.parent
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="an image or a folder of images")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the model's tuned one)")
    parser.add_argument("--json", type=Path, help="write the detections here as COCO results")
    args = parser.parse_args()
    detector = Detector()
    threshold = detector.config["confidence_threshold"] if args.threshold is None else args.threshold
    files, root = image_files(args.input)
    records = []
    for image_id, path in enumerate(files, 1):
        with Image.open(path) as image:
            boxes, scores, labels = detector(np.array(image.convert("RGB")))
        kept = scores > threshold
        for (x1, y1, x2, y2), score, label in zip(boxes[kept].tolist(), scores[kept].tolist(), labels[kept].tolist()):
            records.append({"image_id": image_id, "file_name": path.relative_to(root).as_posix(),
                            "category_id": int(label), "category_name": detector.labels[int(label)],
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(score, 5)})
        print(f"{path}: {int(kept.sum())} detections scoring above {threshold:g}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
