"""Latency of each template on this machine's CPU: PyTorch eager, ONNX Runtime, OpenVINO FP32 and INT8.

Usage: python benchmarks/latency.py [--templates ID ...] [--weights weights.pth ...] [--int8] [--runs 10]
       [--warmup 2] [--output /tmp/otxlite-latency]

Each template is built with random weights for BCCD's 3 classes (or taken from --weights), exported with
`otxlite export` and, with --int8, quantized with `otxlite optimize` (calibrated on the 24 training images of
samples/bccd-mini). Each model runs on one BCCD image (640x480) through otxlite's predictors: the median of
--runs calls after --warmup calls, in milliseconds, from the RGB array in to detections out; the detector
resizes the image to its own input size inside the model. OpenVINO columns: "f32" is how otxlite runs IR
(INFERENCE_PRECISION_HINT f32: the float parts of the graph in f32); "default" is the CPU plugin's own
choice, bf16 on CPUs with AMX. Ratios are to PyTorch eager.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from otxlite.core.files import save_checkpoint
from otxlite.core.labels import LabelSchema
from otxlite.data.specs import split_specs
from otxlite.engine.loop import checkpoint_of
from otxlite.export.exporter import export, input_size
from otxlite.export.optimize import optimize
from otxlite.inference.backends import OpenVinoPredictor, latency_ms, load_predictor
from otxlite.models.build import build_model
from otxlite.models.templates import find_templates

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "bccd-mini"
IMAGE = SAMPLE / "JPEGImages" / "BloodImage_00007.jpg"
CPU = torch.device("cpu")
COLUMNS = {  # name: (model file in the export or optimize folder, predictor)
    "eager": (None, lambda path: load_predictor(path, CPU)),
    "ORT": ("export/model.onnx", lambda path: load_predictor(path, CPU)),
    "OV f32": ("export/openvino.xml", lambda path: OpenVinoPredictor(path, CPU)),
    "OV default": ("export/openvino.xml", lambda path: OpenVinoPredictor(path, CPU, inference_precision=None)),
    "INT8 f32": ("int8/openvino.xml", lambda path: OpenVinoPredictor(path, CPU)),
    "INT8 default": ("int8/openvino.xml", lambda path: OpenVinoPredictor(path, CPU, inference_precision=None)),
}


def random_weights(template, folder):
    """A weights.pth (+ label_schema.json) of the template with random weights for BCCD's classes."""
    schema = LabelSchema.of_classes(["RBC", "WBC", "Platelets"])
    model = build_model(template, len(schema["labels"]), pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "weights.pth", checkpoint_of(model, template, schema, 0, metrics={},
                    confidence_threshold=template["hyper_parameters"]["postprocessing"]["confidence_threshold"]))
    LabelSchema.of(schema).write(folder)
    return folder / "weights.pth", model.transform


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="*", help="template ids (default: all detection templates)")
    parser.add_argument("--weights", nargs="*", default=[], help="trained weights.pth files to time as well")
    parser.add_argument("--int8", action="store_true", help="also quantize with `otxlite optimize` and time INT8")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-latency"))
    args = parser.parse_args()

    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    templates = [t for t in find_templates("detection") if not args.templates or t["id"] in args.templates]
    models = [(t["id"], lambda t=t: random_weights(t, args.output / t["id"])) for t in templates]
    models += [(f"{w} (trained)", lambda w=w: (Path(w), load_predictor(w).model.transform)) for w in args.weights]
    columns = {name: column for name, column in COLUMNS.items() if args.int8 or not name.startswith("INT8")}
    print(f"{'model':<40} {'input':>9} " + " ".join(f"{name + ' ms':>15}" for name in columns), flush=True)
    for name, make_weights in models:
        weights, transform = make_weights()
        export(weights, weights.parent / "export")
        if args.int8:
            optimize(weights.parent / "export" / "openvino.xml", split_specs(SAMPLE / "data.yaml"),
                     weights.parent / "int8")
        timings = [latency_ms(make(weights.parent / file if file else weights), image, args.runs, args.warmup)
                   for file, make in columns.values()]
        size = input_size(transform)
        size = "x".join(map(str, size["fixed_size"])) if "fixed_size" in size else f"{size['min_size']}-{size['max_size']}"
        print(f"{name:<40} {size:>9} " + " ".join(f"{ms:>7.1f} ({timings[0] / ms:>4.1f}x)" for ms in timings),
              flush=True)


if __name__ == "__main__":
    main()
