"""Training recipes ranked on datasets nobody tuned on: each recipe trains a template from random weights (or, with
--pretrained, from the template's pretrained weights: those of the offline templates need no network) with
`--val-split 0.2` (as a user with one folder of images would), keeps the epoch the best-epoch rule picks, and is
scored on a test split it never saw.

Usage: python benchmarks/recipes.py [--datasets NAME ...] [--templates ID ...] [--recipes NAME ...]
                                    [--epochs 30] [--seed 0] [--params NAME=VALUE ...] [--pretrained] [--output DIR]

Datasets (built under --output from ../shared/datasets; none was used to choose a default):
- bccd-100: 100 BCCD images (seeded draw) to train on, the other 264 as test; 3 classes, small platelets.
- bccd-cell-100: the same images with one class, "cell", for every blood cell (red, white, platelet).
- bccd-wbc-100: the same images with white cells only: one large class, about one object an image. Too easy to
  rank recipes (flip-only reaches test mAP@0.5 0.99): kept for the record, not in the default list.
- coco-person: coco-seg's 53 images (both splits merged, every size) as person detection; a seeded 33 to train
  on, 20 as test. Few objects: its figures move by several points between seeds.
Recipes: flip (horizontal flips only, no weight average, no adaptive repeat: the recipe before
transforms.v2), default (the template as shipped), default-ema, default-repeat and default-ema-repeat (the
template without its weight average, its adaptive repeat, or both), flip+ema+repeat (flips only, with the
template's weight average and adaptive repeat: flip-only at default's schedule), default+ema (the template
with the weight average on, for templates that ship it off); --params adds overrides to every recipe, e.g.
learning_parameters.learning_rate=0.05.
Prints one row a run: test mAP@0.5 and mAP@[.5:.95], the epoch kept and its smoothed val figure, minutes.
"""

import argparse
import random
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from otxlite.api import AUGMENTATION
from otxlite.core.files import load_checkpoint
from otxlite.core.report import format_table
from otxlite.data.specs import read_data_yaml
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.models.templates import resolve_template

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
BCCD = SHARED / "bccd" / "BCCD"
COCO_SEG = SHARED / "coco-seg"
NO_EMA, NO_REPEAT = {"ema.enable": "false"}, {"learning_parameters.adaptive_repeat": "false"}
FLIP = {"augmentation": AUGMENTATION["flip"]}
RECIPES = {"flip": {**FLIP, **NO_EMA, **NO_REPEAT}, "default": {}, "default-ema": NO_EMA, "default-repeat": NO_REPEAT,
           "default-ema-repeat": {**NO_EMA, **NO_REPEAT}, "flip+ema+repeat": FLIP, "default+ema": {"ema.enable": "true"}}


def bccd_subset(folder, name, keep=None, rename=None, count=100, seed=0):
    """A VOC root of BCCD whose train list is `count` seeded images and test list the rest; keep: the class names
    kept in the annotations (None: all); rename: one class name for every object kept."""
    root = folder / name
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    ids = sorted(p.stem for p in (BCCD / "Annotations").glob("*.xml"))
    random.Random(seed).shuffle(ids)
    for split, chosen in (("train", sorted(ids[:count])), ("test", sorted(ids[count:]))):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in chosen))
    for image_id in ids:
        tree = ET.parse(BCCD / "Annotations" / f"{image_id}.xml")
        for item in list(tree.getroot().iter("object")):
            if keep is not None and item.findtext("name") not in keep:
                tree.getroot().remove(item)
            elif rename:
                item.find("name").text = rename
        tree.write(root / "Annotations" / f"{image_id}.xml")
    path = root / "data.yaml"
    path.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {root}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                        for s in ("train", "test")))
    return read_data_yaml(path)


def coco_person(folder, train_count=33, seed=0):
    """coco-seg's splits merged, persons only (class 1), a seeded train_count images to train on, the rest test."""
    root = folder / "coco-person-merged"
    images = sorted((COCO_SEG / "images").glob("*/*.*"))
    random.Random(seed).shuffle(images)
    for split, chosen in (("train", images[:train_count]), ("test", images[train_count:])):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image in chosen:
            link = root / "images" / split / image.name
            if not link.exists():
                link.symlink_to(image)
            label = COCO_SEG / "labels" / image.parent.name / f"{image.stem}.txt"
            lines = [line for line in label.read_text().splitlines() if line.split()[:1] == ["1"]]
            (root / "labels" / split / label.name).write_text("".join(f"{line}\n" for line in lines))
    (root / "data.yaml").write_text("path: .\ntrain: images/train\ntest: images/test\nnames: {1: person}\n")
    return read_data_yaml(root / "data.yaml")


DATASETS = {"bccd-100": lambda folder: bccd_subset(folder, "bccd-100"),
            "bccd-cell-100": lambda folder: bccd_subset(folder, "bccd-cell-100", rename="cell"),
            "coco-person": coco_person,
            "bccd-wbc-100": lambda folder: bccd_subset(folder, "bccd-wbc-100", keep={"WBC"})}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS)[:3], choices=list(DATASETS))
    parser.add_argument("--templates", nargs="+", default=["ssdlite320_mobilenet_v3_large"],
                        help="template ids or template files")
    parser.add_argument("--recipes", nargs="+", default=["flip", "default", "default-ema"], choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="train's seed (initialisation, batch order, augmentation)")
    parser.add_argument("--params", nargs="+", default=[], metavar="NAME=VALUE",
                        help="params overrides on top of every recipe, e.g. learning_parameters.learning_rate=0.05")
    parser.add_argument("--pretrained", action="store_true", help="start from the template's pretrained weights")
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-recipes"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets:
        specs = DATASETS[dataset](args.output / "data")
        for template in map(resolve_template, args.templates):
            template_id = template["id"]
            for recipe in args.recipes:
                output = args.output / dataset / template_id / " ".join(
                    [recipe, *args.params, f"seed={args.seed}", *(["pretrained"] if args.pretrained else [])])
                overrides = {**RECIPES[recipe], "learning_parameters.num_iters": str(args.epochs),
                             **dict(item.split("=", 1) for item in args.params)}
                started = time.perf_counter()
                weights = train(template, {"train": specs["train"]}, output, overrides,
                                pretrained=args.pretrained, val_split=0.2, seed=args.seed)
                minutes = (time.perf_counter() - started) / 60
                kept = load_checkpoint(output / "checkpoints" / "last.pth")["best_metric"]
                test = evaluate(weights, {"test": specs["test"]})
                recipe_shown = " ".join([recipe, *args.params, *(["pretrained"] if args.pretrained else [])])
                rows.append((dataset, template_id, recipe_shown, f"{test['map_50']:.3f}", f"{test['map_50_95']:.3f}",
                             f"{kept['epoch']} ({kept['value']:.3f})", f"{minutes:.1f}"))
                print(" | ".join(rows[-1]), flush=True)
    print(format_table(("dataset", "template", "recipe", "test mAP@0.5", "test mAP@[.5:.95]",
                        "epoch kept (smoothed val)", "minutes"), rows))


if __name__ == "__main__":
    main()
