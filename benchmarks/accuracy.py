"""Accuracy from random initialisation: each recipe trained on a dataset's train split (the epoch train's
best-epoch rule keeps), then evaluated on its test split with `otxlite eval`'s figures, per class included.

Usage: python benchmarks/accuracy.py [--recipes NAME ...] [--dataset bccd|coco-person] [--epochs N] [--output DIR]

Pretrained weights cannot be downloaded on the development machine, so every run starts from random
weights. RECIPES name a template and `params` overrides on top of it. The ssdlite/* recipes are the
augmentation ablation: each row adds one thing to the row before (ssdlite/+photometric is the SSDlite
template's default). The fasterrcnn* recipes are the small-object ablation on BCCD's platelets, ending with
the fasterrcnn_mobilenet_v3_large_stride16_fpn template as it is. The printed table gives, per recipe: epochs, training minutes, the best val mAP@0.5 and its
epoch, the test mAP@0.5, mAP@[.5:.95], F1 and each class's test AP@0.5.
"""

import argparse
import time
from pathlib import Path

from otxlite.core.files import load_checkpoint
from otxlite.core.report import format_table
from otxlite.data.specs import read_data_yaml
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.models.templates import resolve_template

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
BCCD = SHARED / "bccd" / "BCCD"
COCO_SEG = SHARED / "coco-seg"


def bccd(folder):
    """BCCD's own train/val/test lists."""
    path = folder / "bccd.yaml"
    path.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {BCCD}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                        for s in ("train", "val", "test")))
    return read_data_yaml(path)


def coco_person(folder):
    """coco-seg as a one-class person detection set (other objects unlabelled), with its own train split for
    training and its val split as both val and test. Most of coco-seg's 60 classes have one or two objects
    and appear in only one of its splits, too few to learn or to test from scratch; persons are in both."""
    root = folder / "coco-person"
    for split in ("train", "val"):
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for label in sorted((COCO_SEG / "labels" / split).glob("*.txt")):
            lines = [line for line in label.read_text().splitlines() if line.split()[:1] == ["1"]]
            (root / "labels" / split / label.name).write_text("".join(f"{line}\n" for line in lines))
    for split in ("train", "val"):
        link = root / "images" / split
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(COCO_SEG / "images" / split)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {1: person}\n")
    specs = read_data_yaml(root / "data.yaml")
    return {**specs, "test": specs["val"]}


DATASETS = {"bccd": bccd, "coco-person": coco_person}
SSDLITE = {"learning_parameters.num_iters": "15", "learning_parameters.learning_rate": "0.05",
           "learning_parameters.warmup_iters": "13", "learning_parameters.enable_early_stopping": "false"}
FLIP = "RandomHorizontalFlip: {p: 0.5}"
PHOTOMETRIC = "RandomPhotometricDistort: {p: 0.5}"
MOSAIC = "Mosaic: {p: 0.5}"
SCALE_CROP = "RandomZoomOut: {fill: [124, 116, 104], side_range: [1.0, 2.0], p: 0.5}, RandomIoUCrop: {}"
FASTERRCNN_480 = {"model.architecture": "otxlite.models.build:fasterrcnn_mobilenet_v3_large_fpn",
                  "model.kwargs.min_size": "480", "model.kwargs.max_size": "640",
                  "learning_parameters.num_iters": "10", "learning_parameters.lr_steps": "[7, 9]",
                  "learning_parameters.enable_early_stopping": "false"}
RECIPES = {  # name: (template, params overrides)
    "ssdlite/flip": ("ssdlite320_mobilenet_v3_large",
                     {**SSDLITE, "augmentation": f"{{{FLIP}}}", "anchors.fit": "false"}),
    "ssdlite/+photometric": ("ssdlite320_mobilenet_v3_large",
                             {**SSDLITE, "augmentation": f"{{{PHOTOMETRIC}, {FLIP}}}", "anchors.fit": "false"}),
    "ssdlite/+scale-crop": ("ssdlite320_mobilenet_v3_large",
                            {**SSDLITE, "augmentation": f"{{{PHOTOMETRIC}, {SCALE_CROP}, {FLIP}}}",
                             "anchors.fit": "false"}),
    "ssdlite/+anchors": ("ssdlite320_mobilenet_v3_large",
                         {**SSDLITE, "augmentation": f"{{{PHOTOMETRIC}, {SCALE_CROP}, {FLIP}}}"}),
    "ssdlite/+mosaic": ("ssdlite320_mobilenet_v3_large",
                        {**SSDLITE, "augmentation": f"{{{MOSAIC}, {PHOTOMETRIC}, {SCALE_CROP}, {FLIP}}}"}),
    "ssdlite/photometric+anchors": ("ssdlite320_mobilenet_v3_large",
                                    {**SSDLITE, "augmentation": f"{{{PHOTOMETRIC}, {FLIP}}}"}),
    "ssdlite/photometric+anchors+mosaic": ("ssdlite320_mobilenet_v3_large",
                                           {**SSDLITE, "augmentation": f"{{{MOSAIC}, {PHOTOMETRIC}, {FLIP}}}"}),
    # Faster R-CNN MobileNetV3 FPN at BCCD's own 480x640: torchvision's stages (both at stride 32), + the
    # stride-16 stage, + RPN positives at IoU 0.5; the template adds anchors fitted when a class's recall is low.
    "fasterrcnn@480": ("fasterrcnn_mobilenet_v3_large_fpn", FASTERRCNN_480),
    "fasterrcnn/+stride16@480": ("fasterrcnn_mobilenet_v3_large_fpn",
                                 {**FASTERRCNN_480, "model.kwargs.returned_layers": "[3, 4, 5]"}),
    "fasterrcnn/+rpn0.5@480": ("fasterrcnn_mobilenet_v3_large_fpn",
                               {**FASTERRCNN_480, "model.kwargs.returned_layers": "[3, 4, 5]",
                                "model.kwargs.rpn_fg_iou_thresh": "0.5"}),
    "fasterrcnn_mobilenet_v3_large_stride16_fpn": ("fasterrcnn_mobilenet_v3_large_stride16_fpn", {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--dataset", default="bccd", choices=list(DATASETS))
    parser.add_argument("--epochs", type=int, help="Override every recipe's epochs.")
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-accuracy"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    specs = DATASETS[args.dataset](args.output)
    rows = []
    for name in args.recipes:
        template_id, overrides = RECIPES[name]
        overrides = {**overrides, **({"learning_parameters.num_iters": str(args.epochs)} if args.epochs else {})}
        epochs = overrides.get("learning_parameters.num_iters") or \
            resolve_template(template_id)["hyper_parameters"]["learning_parameters"]["num_iters"]
        started = time.perf_counter()
        output = args.output / args.dataset / name
        weights = train(resolve_template(template_id), specs, output, overrides, pretrained=False)
        minutes = (time.perf_counter() - started) / 60
        checkpoint = load_checkpoint(weights)
        test = evaluate(weights, {"test": specs["test"]})
        per_class = "  ".join(f"{c} {v['ap'] or 0:.3f}" for c, v in test["per_class"].items())
        rows.append((name, epochs, f"{minutes:.0f}",
                     f"{checkpoint['metrics']['map_50']:.3f} ({checkpoint['epoch']})", f"{test['map_50']:.3f}",
                     f"{test['map_50_95']:.3f}", f"{test['f-measure']:.3f}", per_class))
        print(rows[-1], flush=True)
    print(format_table(("recipe", "epochs", "minutes", "val mAP@0.5 (epoch)", "test mAP@0.5", "test mAP",
                        "test F1", "test AP@0.5 per class"), rows))


if __name__ == "__main__":
    main()
