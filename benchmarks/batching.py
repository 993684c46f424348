"""PyTorch inference: images of one size run as one batch, against one image at a time.

otxlite's TorchPredictor only batches images of the same size (padding a mixed batch changes detections).
This measures whether batching even those is worth it, on a folder of real images.

Usage: python benchmarks/batching.py --load-weights runs/x/weights.pth --input FOLDER [--batch-size 8] [--repeats 3]
Prints images/s for both, and the largest score difference between them.
"""

import argparse
import time

import numpy as np
import torch

from otxlite.data.formats.base import decode_image, images_in
from otxlite.inference.backends import load_predictor


def images_per_second(predictor, images, batch_size, repeats):
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        results = [r for i in range(0, len(images), batch_size) for r in predictor(images[i:i + batch_size])]
        best = min(best, time.perf_counter() - started)
    return len(images) / best, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-weights", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    predictor = load_predictor(args.load_weights, "cpu")
    images = [decode_image(path) for path in images_in(args.input)]
    sizes = {image.shape[:2] for image in images}
    predictor(images[:2])  # warm-up
    alone, single = images_per_second(predictor, images, 1, args.repeats)
    batched, grouped = images_per_second(predictor, images, args.batch_size, args.repeats)
    difference = max((np.abs(a["scores"] - b["scores"]).max(initial=0) for a, b in zip(single, grouped)
                      if len(a["scores"]) == len(b["scores"])), default=0.0)
    print(f"{len(images)} images, {len(sizes)} size(s), {torch.get_num_threads()} threads")
    print(f"one at a time: {alone:.2f} images/s")
    print(f"batches of {args.batch_size} (same-size groups): {batched:.2f} images/s ({batched / alone:.2f}x)")
    print(f"largest score difference between the two: {difference:.2e}")


if __name__ == "__main__":
    main()
