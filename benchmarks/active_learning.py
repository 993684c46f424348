"""Active learning against random picks, as a user runs the loop: label a seeded 20 % of the train split, train,
then three times pick 10 % more with `otxlite select` (the rule) or at random (`--rule random`), and retrain on all
labelled images. Prints test mAP@0.5 against labelled images for both, and plots them.

Usage: python benchmarks/active_learning.py [--data bccd|coco-seg] [--rule entropy] [--epochs 5]
       [--template fasterrcnn_efficientnet_lite0_320_fpn] [--output /tmp/otxlite-al]

bccd: samples/bccd's train split is the pool, val picks the epoch, test scores. coco-seg: its 26 labelled train
images are split (seeded) into a pool of 18 and a test set of 8, which also picks the epoch (it has no other).
Each round retrains from the template's pretrained weights, without adaptive repeats, so a round's cost grows
with its images. A run folder that already holds weights.pth is reused.
"""

import argparse
import json
import random
import subprocess
from pathlib import Path

from qat import otxlite  # benchmarks/qat.py, beside this script: run, exit on failure

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT / "samples" / "bccd"
COCO_SEG = ROOT.parent / "shared" / "datasets" / "coco-seg"
START, STEP, ROUNDS = 0.2, 0.1, 3


def bccd_setup(folder):
    """(pool image paths, data.yaml template with {labelled} for the train image-list, eval data.yaml)."""
    ids = (BCCD / "ImageSets" / "Main" / "train.txt").read_text().split()
    pool = [BCCD / "JPEGImages" / f"{i}.jpg" for i in ids]
    split = "{{ann-files: {root}, data-roots: {images}{extra}}}"
    train = split.format(root=BCCD, images=BCCD / "JPEGImages", extra=", subset: train, image-list: {labelled}")
    val = split.format(root=BCCD, images=BCCD / "JPEGImages", extra="")
    data = f"data:\n  train: {train}\n  val: {val}\n  test: {val.replace('}', ', subset: test}')}\n"
    return pool, data


def coco_seg_setup(folder):
    """As bccd_setup, on coco-seg: a seeded 8 of its labelled images as test (and val), the rest the pool."""
    import yaml

    images = sorted((COCO_SEG / "images" / "train").glob("*.jpg"))
    random.Random(0).shuffle(images)
    test, pool = images[:8], sorted(images[8:])
    names = yaml.safe_load((COCO_SEG / "data.yaml").read_text())["names"]
    (folder / "test.txt").write_text("".join(f"{p.name}\n" for p in test))
    labels, roots = COCO_SEG / "labels" / "train", COCO_SEG / "images" / "train"
    train = f"{{ann-files: {labels}, data-roots: {roots}, format: yolo, image-list: {{labelled}}}}"
    test_split = f"{{ann-files: {labels}, data-roots: {roots}, format: yolo, image-list: {folder / 'test.txt'}}}"
    names = yaml.safe_dump(names, default_flow_style=True, width=10**6).strip()
    data = f"names: {names}\ndata:\n  train: {train}\n  val: {test_split}\n  test: {test_split}\n"
    return pool, data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["bccd", "coco-seg"], default="bccd")
    parser.add_argument("--rule", default="entropy", choices=["entropy", "least_confidence"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--template", default="fasterrcnn_efficientnet_lite0_320_fpn")
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-al"))
    args = parser.parse_args()
    folder = args.output / args.data
    folder.mkdir(parents=True, exist_ok=True)
    print(subprocess.run("lscpu | grep -E 'Model name|^CPU\\(s\\)'", shell=True, capture_output=True, text=True,
                         check=False).stdout.strip())
    pool, data = (bccd_setup if args.data == "bccd" else coco_seg_setup)(folder)
    start = random.Random(0).sample(pool, round(START * len(pool)))
    step = round(STEP * len(pool))
    curves = {}
    for arm in (args.rule, "random"):
        labelled, curve = list(start), []
        for round_number in range(ROUNDS + 1):
            run = folder / ("start" if round_number == 0 else f"{arm}_{round_number}")
            listed = folder / f"{run.name}.txt"
            listed.write_text("".join(f"{p.name}\n" for p in labelled))
            data_yaml = folder / f"{run.name}.yaml"
            data_yaml.write_text(data.replace("{labelled}", str(listed)))
            if not (run / "weights.pth").is_file():
                otxlite("train", args.template, "--data", data_yaml, "--output", run, "params",
                        "--learning_parameters.num_iters", args.epochs, "--learning_parameters.adaptive_repeat",
                        "false")
            if not (run / "eval" / "performance.json").is_file():
                otxlite("eval", "--load-weights", run / "weights.pth", "--data", data_yaml, "--output", run / "eval")
            figure = json.loads((run / "eval" / "performance.json").read_text())["map_50"]
            curve.append((len(labelled), figure))
            print(f"{arm:>16} round {round_number}: {len(labelled):4d} labelled images, test mAP@0.5 {figure:.3f}",
                  flush=True)
            if round_number == ROUNDS:
                break
            unlabelled = folder / f"{run.name}_unlabelled.txt"
            chosen = {p.name for p in labelled}
            unlabelled.write_text("".join(f"{p}\n" for p in pool if p.name not in chosen))
            picks = folder / f"{run.name}_{arm}_picks.txt"
            otxlite("select", "--load-weights", run / "weights.pth", "--input", unlabelled, "--budget", step,
                    "--rule", arm, "--seed", round_number, "--output", picks)
            labelled += [(picks.parent / line).resolve() for line in picks.read_text().split()]
        curves[arm] = curve
    print(f"\n{'labelled images':>16}" + "".join(f"{n:>8d}" for n, _ in curves["random"]))
    for arm, curve in curves.items():
        print(f"{arm:>16}" + "".join(f"{figure:>8.3f}" for _, figure in curve))
    plot(curves, args.data, folder / "active_learning.png")


def plot(curves, name, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for arm, curve in curves.items():
        axes.plot(*zip(*curve), marker="o", label=arm)
    axes.set_xlabel("labelled images")
    axes.set_ylabel("test mAP@0.5")
    axes.set_title(f"Active learning on {name}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
