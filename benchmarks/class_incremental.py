"""Class-incremental training on BCCD: how much a grown model forgets, against training on every class from the
start, as a user runs it.

1. old: train on BCCD with WBC and RBC only (its Platelets boxes removed from the annotations);
2. grown: `otxlite train --load-weights old/weights.pth` on all of BCCD (WBC, RBC and Platelets labelled), fewer
   epochs;
3. from start: train on all of BCCD, the template's epochs;
then `otxlite eval` of each on the test split. Prints each class's test AP@0.5, mAP@0.5 and the training minutes.

Usage: python benchmarks/class_incremental.py [--template fasterrcnn_efficientnet_lite0_320_fpn] [--epochs 5]
       [--grow-epochs 3] [--output /tmp/otxlite-incremental]

A run folder that already holds weights.pth is reused. Run it alone: the minutes are only true when nothing else
runs.
"""

import argparse
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from qat import otxlite  # benchmarks/qat.py, beside this script: run, exit on failure

BCCD = Path(__file__).resolve().parents[1] / "samples" / "bccd"
CLASSES = ("WBC", "RBC", "Platelets")
OLD_CLASSES = ("WBC", "RBC")


def data_yaml(path, root):
    """A data.yaml of BCCD's own train/val/test split with the annotations of root (a VOC root)."""
    path.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {root}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                        for s in ("train", "val", "test")))
    return path


def without_new_class(root):
    """A VOC root at root whose annotations are BCCD's without the Platelets boxes (as labelled before the class
    was needed)."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for xml in (BCCD / "Annotations").glob("*.xml"):
        tree = ET.parse(xml)
        for node in tree.getroot().findall("object"):
            if node.findtext("name").strip() not in OLD_CLASSES:
                tree.getroot().remove(node)
        tree.write(root / "Annotations" / xml.name)
    shutil.copytree(BCCD / "ImageSets", root / "ImageSets", dirs_exist_ok=True)
    return root


def trained(run, *args):
    """Train into run unless it holds weights.pth; the minutes it took (None when reused)."""
    return None if (run / "weights.pth").is_file() else otxlite("train", "--output", run, *args)


def test_figures(run, data):
    """{class: test AP@0.5, "mAP@0.5": ...} of run's weights.pth."""
    otxlite("eval", "--load-weights", run / "weights.pth", "--data", data, "--output", run / "eval")
    performance = json.loads((run / "eval" / "performance.json").read_text())
    return {**{name: row["ap"] for name, row in performance["per_class"].items()}, "mAP@0.5": performance["map_50"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", default="fasterrcnn_efficientnet_lite0_320_fpn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--grow-epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-incremental"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    print(subprocess.run("lscpu | grep -E 'Model name|^CPU\\(s\\)'", shell=True, capture_output=True,
                         text=True).stdout.strip())
    full = data_yaml(args.output / "bccd.yaml", BCCD)
    old_data = data_yaml(args.output / "bccd_old_classes.yaml", without_new_class(args.output / "old_classes_voc"))
    epochs = ["params", "--learning_parameters.num_iters"]
    runs = {"old (WBC, RBC)": (args.output / "old", old_data,
                               [args.template, "--data", old_data, *epochs, args.epochs])}
    runs[f"grown (+Platelets, {args.grow_epochs} epochs)"] = (
        args.output / "grown", full, [args.template, "--data", full, "--load-weights", args.output / "old" / "weights.pth",
                                      *epochs, args.grow_epochs])
    runs[f"from start ({args.epochs} epochs)"] = (args.output / "from_start", full,
                                                  [args.template, "--data", full, *epochs, args.epochs])
    rows = []
    for name, (run, data, train_args) in runs.items():
        minutes = trained(run, *train_args)
        rows.append((name, test_figures(run, data), minutes))
    columns = (*CLASSES, "mAP@0.5")
    print(f"\n{'test AP@0.5':34}" + "".join(f"{c:>11}" for c in columns) + f"{'train min':>11}")
    for name, figures, minutes in rows:
        print(f"{name:34}" + "".join(f"{figures[c]:>11.3f}" if c in figures else f"{'-':>11}" for c in columns)
              + (f"{minutes:>11.1f}" if minutes is not None else f"{'reused':>11}"))


if __name__ == "__main__":
    main()
