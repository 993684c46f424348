"""Accuracy on BCCD from random initialisation: each recipe trained on train (best epoch by val mAP@0.5),
then evaluated on test with `otxlite eval`'s figures.

Usage: python benchmarks/accuracy.py [--recipes NAME ...] [--output /tmp/otxlite-accuracy]

Pretrained weights cannot be downloaded on the development machine, so every run starts from random
weights; RECIPES name a template and the from-scratch overrides used (hyper-parameters and model
constructor arguments, on top of the template's). The printed table gives, per recipe: epochs,
training minutes, the best val mAP@0.5 and its epoch, and on the 72 test images mAP@0.5,
mAP@[.5:.95], F1 and the threshold F1 was tuned at.
"""

import argparse
import time
from pathlib import Path

from otxlite.data import read_data_yaml
from otxlite.evaluate import evaluate
from otxlite.files import load_checkpoint
from otxlite.report import format_table
from otxlite.templates import resolve_template
from otxlite.train import train

BCCD = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "bccd" / "BCCD"
# name: (template, hyper-parameter overrides, model constructor arguments replacing the template's)
RECIPES = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        {"learning_parameters.num_iters": "20", "learning_parameters.lr_steps": "[14, 18]"}, {}),
    "fasterrcnn_mobilenet_v3_large_320_fpn@480": (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        {"learning_parameters.num_iters": "10", "learning_parameters.lr_steps": "[7, 9]"},
        {"min_size": 480, "max_size": 640}),
    "ssdlite320_mobilenet_v3_large": (
        "ssdlite320_mobilenet_v3_large",
        {"learning_parameters.num_iters": "30", "learning_parameters.learning_rate": "0.05",
         "learning_parameters.warmup_iters": "13", "learning_parameters.enable_early_stopping": "false"}, {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-accuracy"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    data = args.output / "data.yaml"
    data.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {BCCD}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                        for s in ("train", "val", "test")))
    rows = []
    for name in args.recipes:
        template_id, overrides, model_kwargs = RECIPES[name]
        template = resolve_template(template_id)
        template["model"]["kwargs"].update(model_kwargs)
        started = time.perf_counter()
        weights = train(template, read_data_yaml(data), args.output / name, overrides, pretrained=False)
        minutes = (time.perf_counter() - started) / 60
        checkpoint = load_checkpoint(weights)
        test = evaluate(weights, read_data_yaml(data))
        rows.append((name, overrides["learning_parameters.num_iters"], f"{minutes:.0f}",
                     f"{checkpoint['metrics']['map_50']:.3f} ({checkpoint['epoch']})", f"{test['map_50']:.3f}",
                     f"{test['map_50_95']:.3f}", f"{test['f-measure']:.3f}", f"{test['confidence_threshold']:g}"))
        print(rows[-1], flush=True)
    print(format_table(("recipe", "epochs", "minutes", "val mAP@0.5 (epoch)", "test mAP@0.5", "test mAP",
                        "test F1", "threshold"), rows))


if __name__ == "__main__":
    main()
