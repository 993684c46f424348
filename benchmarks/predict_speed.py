"""Images/s of `otxlite predict` against a plain one-image-at-a-time loop, per model file.

Usage: python benchmarks/predict_speed.py MODEL [MODEL ...] [--images DIR] [--batch-size 8] [--device cpu]

MODEL is a weights.pth, model.onnx or openvino.xml (FP32 or INT8). "one at a time" decodes each image with
PIL and calls the predictor on it, in one process, as a simple script would. "predict" is what `otxlite
predict` runs: images decoded in DataLoader workers while the model works, --batch-size images a call, and
for OpenVINO a throughput-compiled model running them as parallel asynchronous requests. Both include
decoding; neither writes files. Default images: BCCD's 72 test images when ../shared/datasets/bccd is there,
else the 40 of samples/bccd-mini.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.core.report import format_table
from otxlite.inference.images import detect_images, image_files
from otxlite.inference.backends import load_predictor

ROOT = Path(__file__).resolve().parent.parent
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "BCCD"


def default_images():
    if (BCCD / "ImageSets" / "Main" / "test.txt").is_file():
        return [BCCD / "JPEGImages" / f"{i}.jpg" for i in (BCCD / "ImageSets" / "Main" / "test.txt").read_text().split()]
    return image_files(ROOT / "samples" / "bccd-mini" / "JPEGImages")[0]


def one_at_a_time(path, files, device):
    predictor = load_predictor(path, device)
    predictor([np.array(Image.open(files[0]).convert("RGB"))])  # warm-up
    started = time.perf_counter()
    for file in files:
        with Image.open(file) as image:
            predictor([np.array(image.convert("RGB"))])
    return len(files) / (time.perf_counter() - started)


def batched(path, files, device, batch_size):
    predictor = load_predictor(path, device, throughput=True)
    predictor([np.array(Image.open(f).convert("RGB")) for f in files[:batch_size]])  # warm-up
    started = time.perf_counter()
    count = sum(1 for _ in detect_images(predictor, files, batch_size))
    return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, help="a folder of images (default: see above)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    files = image_files(args.images)[0] if args.images else default_images()
    rows = []
    for path in args.models:
        single = one_at_a_time(path, files, args.device)
        fast = batched(path, files, args.device, args.batch_size)
        rows.append((str(path), f"{single:.1f}", f"{fast:.1f}", f"{fast / single:.2f}x"))
        print(f"{path}: {single:.1f} -> {fast:.1f} images/s", flush=True)
    print(f"\n{len(files)} images, device {args.device}, batch size {args.batch_size}")
    print(format_table(("model", "one at a time (img/s)", "otxlite predict (img/s)", "speed-up"), rows))


if __name__ == "__main__":
    main()
