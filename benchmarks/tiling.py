"""Is tiling worth it? Large images with small objects, trained and tested without and with tiling.

Usage: python benchmarks/tiling.py [--grid 3] [--template ID] [--epochs N] [--output DIR]
                                  [--params KEY=VALUE ...] [--runs false,true]

BCCD's 640x480 images become GRID x GRID mosaics at full resolution (3: 1920x1440, where a platelet is about 2 %
of the image's side), their boxes shifted; BCCD's own train/val/test lists are kept apart, so no source image is
in two splits. The same template is trained from random weights for the same epochs and input size with
tiling.enable false and true (tile_size and the rest from the template and --params, as `otxlite params` names
them: unset tile_size is chosen from the objects), then evaluated on the test mosaics with `otxlite eval`'s figures. Printed per run: training minutes,
test mAP@0.5, mAP@[.5:.95], each class's AP@0.5 (platelets are the small objects), and the median
milliseconds to predict one test mosaic (weights.pth on this machine's CPU; run nothing else meanwhile).
"""

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.core.report import format_table
from otxlite.data.formats.base import decode_image
from otxlite.data.specs import read_data_yaml
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.inference.backends import latency_ms, load_predictor
from otxlite.models.templates import resolve_template

BCCD = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "bccd" / "BCCD"


def mosaic_dataset(folder, grid, seed=0):
    """A Pascal VOC root of GRID x GRID mosaics of BCCD, one split list per BCCD split (its images only)."""
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(exist_ok=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        ids = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        ids = [ids[i] for i in generator.permutation(len(ids))]
        groups = [ids[i:i + grid * grid] for i in range(0, len(ids) - grid * grid + 1, grid * grid)]
        names = [f"{split}_{index:03d}" for index in range(len(groups))]
        for name, group in zip(names, groups):
            write_mosaic(folder, name, group, grid)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    data = folder / "data.yaml"
    data.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {folder}}}\n" for s in ("train", "val", "test")))
    return data


def write_mosaic(folder, name, ids, grid):
    """BCCD images ids side by side, grid to a row, as folder/JPEGImages/name.jpg with its VOC annotation."""
    tiles = [decode_image(BCCD / "JPEGImages" / f"{image_id}.jpg") for image_id in ids]
    height, width = tiles[0].shape[:2]
    canvas = np.zeros((height * grid, width * grid, 3), np.uint8)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width * grid), ("height", height * grid), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for index, (image_id, tile) in enumerate(zip(ids, tiles)):
        top, left = (index // grid) * height, (index % grid) * width
        canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile[:height, :width]
        for obj in ET.parse(BCCD / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            box = obj.find("bndbox")
            placed = ET.SubElement(root, "object")
            ET.SubElement(placed, "name").text = obj.findtext("name")
            ET.SubElement(placed, "difficult").text = obj.findtext("difficult") or "0"
            shifted = ET.SubElement(placed, "bndbox")
            for key, offset in (("xmin", left), ("ymin", top), ("xmax", left), ("ymax", top)):
                ET.SubElement(shifted, key).text = str(float(box.findtext(key)) + offset)
    Image.fromarray(canvas).save(folder / "JPEGImages" / f"{name}.jpg", quality=95)
    ET.ElementTree(root).write(folder / "Annotations" / f"{name}.xml")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=3, help="BCCD images per mosaic side")
    parser.add_argument("--template", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-tiling"))
    parser.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="template overrides for both runs, e.g. tiling.tile_size=320")
    parser.add_argument("--runs", default="false,true", help="the tiling.enable values to run, in order")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.params)
    specs = read_data_yaml(mosaic_dataset(args.output / f"bccd-mosaic-{args.grid}", args.grid))
    test_image = decode_image(next((args.output / f"bccd-mosaic-{args.grid}" / "JPEGImages").glob("test_*.jpg")))
    rows = []
    for enable in args.runs.split(","):
        started = time.perf_counter()
        weights = train(resolve_template(args.template), specs, args.output / f"tiling-{enable}",
                        {**overrides, "tiling.enable": enable, "learning_parameters.num_iters": str(args.epochs)},
                        pretrained=False)
        minutes = (time.perf_counter() - started) / 60
        test = evaluate(weights, {"test": specs["test"]})
        milliseconds = latency_ms(load_predictor(weights, "cpu"), test_image, runs=5, warmup=1)
        per_class = "  ".join(f"{c} {v['ap'] or 0:.3f}" for c, v in test["per_class"].items())
        rows.append((enable, f"{minutes:.0f}", f"{test['map_50']:.3f}", f"{test['map_50_95']:.3f}", per_class,
                     f"{milliseconds:.0f}"))
        print(rows[-1], flush=True)
    print(format_table(("tiling", "minutes", "test mAP@0.5", "test mAP", "test AP@0.5 per class",
                        "ms / image"), rows))


if __name__ == "__main__":
    main()
