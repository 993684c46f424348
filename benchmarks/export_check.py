"""Check that every detection template exports and that each FP32 backend gives PyTorch's detections.

Usage: python benchmarks/export_check.py [--templates ID ...] [--epochs 40] [--min-size 320]
       [--output /tmp/otxlite-export-check]

Random weights make a vacuous check (no detection above the threshold, or hundreds of tied ones that the
detection cap cuts differently per backend), so each template is first fitted to 4 BCCD sample images
(at --min-size for the resizable ones, to keep this affordable on a CPU), then exported with
`otxlite export`. For each backend the script prints how many of PyTorch's detections scoring at least
--min-score have no partner (same label, box within 1 px, score within 1e-3), on the 8 sample test
images at 640x480, 300x500 and 500x300, and the largest mAP@0.5 / F1 difference from `eval`.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.data.specs import split_specs
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.export.exporter import export
from otxlite.inference.backends import load_predictor, unmatched_detections
from otxlite.models.templates import find_templates

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "bccd-mini"
SIZES = (None, (300, 500), (500, 300))
EXPORTED = ("model.onnx", "openvino.xml")


def sample_ids(split):
    return (SAMPLE / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def fitted_weights(template, folder, epochs, min_size):
    """Train the template on 4 sample images until it fits them; returns weights.pth."""
    (folder / "images").mkdir(exist_ok=True)
    for image_id in sample_ids("train")[:4]:
        shutil.copy(SAMPLE / "Annotations" / f"{image_id}.xml", folder / "images")
        shutil.copy(SAMPLE / "JPEGImages" / f"{image_id}.jpg", folder / "images")
    (folder / "data.yaml").write_text("data:\n  train: {ann-files: images}\n  val: {ann-files: images}\n")
    kwargs = template["model"]["kwargs"]
    if "min_size" in kwargs:
        kwargs.update(min_size=min_size, max_size=2 * min_size)
    template["hyper_parameters"]["learning_parameters"].update(
        batch_size=2, num_workers=0, warmup_iters=2, lr_scheduler="cosine", enable_early_stopping=False,
        num_iters=epochs)
    return train(template, split_specs(folder / "data.yaml"), folder / "train", pretrained=False)


def check(weights, folder, min_score):
    """(unmatched, compared) detections per exported file over the test images and sizes."""
    predictors = {name: load_predictor(path) for name, path in
                  [("weights.pth", weights)] + [(name, folder / name) for name in EXPORTED]}
    counts = {name: [0, 0] for name in EXPORTED}
    for image_id in sample_ids("test"):
        original = Image.open(SAMPLE / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        for size in SIZES:
            image = np.asarray(original.resize(size, Image.BILINEAR) if size else original)
            reference = predictors["weights.pth"]([image])[0]
            for name in EXPORTED:
                detections = predictors[name]([image])[0]
                counts[name][0] += len(unmatched_detections(reference, detections, min_score))
                counts[name][0] += len(unmatched_detections(detections, reference, min_score))
                counts[name][1] += int((reference["scores"] >= min_score).sum())
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="*", help="template ids (default: all detection templates)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--min-score", type=float, default=0.2)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-export-check"))
    args = parser.parse_args()

    test_data = args.output / "test.yaml"
    args.output.mkdir(parents=True, exist_ok=True)
    test_data.write_text(f"data:\n  test: {{ann-files: {SAMPLE}}}\n")
    rows, failed = [], False
    for template in find_templates("detection"):
        if args.templates and template["id"] not in args.templates:
            continue
        folder = args.output / template["id"]
        folder.mkdir(parents=True, exist_ok=True)
        weights = fitted_weights(template, folder, args.epochs, args.min_size)
        export(weights, folder / "export")
        counts = check(weights, folder / "export", args.min_score)
        reference = evaluate(weights, split_specs(test_data))
        differences = [abs(evaluate(folder / "export" / name, split_specs(test_data))[key] - reference[key])
                       for name in EXPORTED for key in ("map_50", "f-measure")]
        failed |= any(unmatched for unmatched, _ in counts.values()) or max(differences) > 5e-4
        rows.append(f"{template['id']:<40} " + " ".join(f"{unmatched:>4}/{compared:<5}" for unmatched, compared in
                                                         counts.values()) + f" {max(differences):>10.5f}")
        print(rows[-1], flush=True)
    print(f"\n{'template':<40} {'ONNX':>10} {'OpenVINO':>10} {'eval diff':>10}   (unmatched/compared detections)")
    print("\n".join(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
