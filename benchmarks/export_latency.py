"""Latency of each template on this machine's CPU: PyTorch eager vs ONNX Runtime vs OpenVINO FP32.

Usage: python benchmarks/export_latency.py [--templates ID ...] [--weights weights.pth ...] [--runs 10]
       [--warmup 2] [--output /tmp/otxlite-latency]

Each template is built with random weights for BCCD's 3 classes (or taken from --weights), exported with
`otxlite export`, and run on one BCCD image (640x480) through otxlite's predictors: the median of --runs
calls after --warmup calls, in milliseconds, from the RGB array in to detections out. The detector resizes
the image to its own input size inside the model. OpenVINO computes in f32 (INFERENCE_PRECISION_HINT).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.data import label_schema
from otxlite.export import export, input_size
from otxlite.files import save_checkpoint, write_label_schema
from otxlite.models import build_model
from otxlite.predictors import latency_ms, load_predictor
from otxlite.templates import find_templates
from otxlite.train import weights_checkpoint

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "samples" / "bccd-mini" / "JPEGImages" / "BloodImage_00007.jpg"
BACKENDS = {"eager": "weights.pth", "onnxruntime": "model.onnx", "openvino_fp32": "openvino.xml"}


def random_weights(template, folder):
    """A weights.pth (+ label_schema.json) of the template with random weights for BCCD's classes."""
    schema = label_schema(["RBC", "WBC", "Platelets"])
    model = build_model(template, len(schema["labels"]), pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "weights.pth", weights_checkpoint(model, template, schema, {}, 0))
    write_label_schema(folder, schema)
    return folder / "weights.pth", model.transform


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="*", help="template ids (default: all detection templates)")
    parser.add_argument("--weights", nargs="*", default=[], help="trained weights.pth files to time as well")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-latency"))
    args = parser.parse_args()

    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    templates = [t for t in find_templates("detection") if not args.templates or t["id"] in args.templates]
    models = [(t["id"], lambda t=t: random_weights(t, args.output / t["id"])) for t in templates]
    models += [(f"{w} (trained)", lambda w=w: (Path(w), load_predictor(w).model.transform)) for w in args.weights]
    print(f"{'model':<45} {'input':>14} {'eager ms':>9} {'ORT ms':>8} {'OV FP32 ms':>10} {'eager/ORT':>9} "
          f"{'eager/OV':>8}", flush=True)
    for name, make_weights in models:
        weights, transform = make_weights()
        folder = weights.parent / "export"
        export(weights, folder)
        timings = {backend: latency_ms(load_predictor(weights if backend == "eager" else folder / file, "cpu"),
                                       image, args.runs, args.warmup)
                   for backend, file in BACKENDS.items()}
        size = input_size(transform)
        size = "x".join(map(str, size["fixed_size"])) if "fixed_size" in size else f"{size['min_size']}-{size['max_size']}"
        eager, ort, ov = timings.values()
        print(f"{name:<45} {size:>14} {eager:>9.1f} {ort:>8.1f} {ov:>10.1f} {eager / ort:>9.2f} {eager / ov:>8.2f}",
              flush=True)


if __name__ == "__main__":
    main()
