"""The instance-segmentation chain as a user runs it, on real data: train -> eval -> export -> optimize -> eval of
every model file -> demo -> predict -> deploy (its run.py included), printing segm and box figures per model file.

Usage: python benchmarks/segmentation_chain.py [--data ../shared/datasets/coco-seg/data.yaml]
       [--layout yolo-seg penn-fudan coco-rle] [--template maskrcnn_mobilenet_v3_large_fpn] [--epochs 10]
       [--min-size 480 --max-size 640] [--evaluate-on val|train] [--output /tmp/otxlite-segmentation-chain]

--evaluate-on train makes the training images the val and test splits too: from random weights, 26 training
images teach a model nothing that transfers to val (mask mAP 0), so the figures of each model file, and what INT8
costs, are only measurable on the images the model was fitted to.

Layouts: yolo-seg is the data.yaml as given (its val split doubling as test, as in every layout); penn-fudan writes its images as PNGImages/ + PedMasks/ (one mask
PNG per image, instance value class position * 1000 + n, overlaps resolved as a real mask image does: later
instances cover earlier ones); coco-rle writes one COCO JSON per split with compressed RLE masks.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from otxlite.data.formats.shapes import instance_masks
from otxlite.data.records import load_splits
from otxlite.data.specs import read_data_yaml

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco-seg" / "data.yaml"


def otxlite(*args):
    """Run the otxlite command; exit on failure with its output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "otxlite", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"otxlite {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr, time.perf_counter() - started


def write_penn_fudan(splits, names, folder):
    entries = {}
    for name, split in splits.items():
        images, masks = folder / name / "PNGImages", folder / name / "PedMasks"
        images.mkdir(parents=True)
        masks.mkdir()
        for sample in split.samples:
            shutil.copy(sample.image, images / sample.image.name)
            values = np.zeros((sample.height, sample.width), np.uint16)
            for number, (mask, class_name) in enumerate(
                    zip(instance_masks(sample.shapes, sample.width, sample.height), sample.classes), 1):
                values[mask > 0] = names.index(class_name) * 1000 + number
            Image.fromarray(values).save(masks / f"{sample.image.stem}_mask.png")
        entries[name] = {"ann-files": f"{name}/PedMasks", "data-roots": f"{name}/PNGImages",
                         "names": dict(enumerate(names))}
    return entries


def write_coco_rle(splits, names, folder):
    entries = {}
    for name, split in splits.items():
        (folder / name).mkdir(parents=True)
        images, annotations = [], []
        for index, sample in enumerate(split.samples, 1):
            shutil.copy(sample.image, folder / name / sample.image.name)
            images.append({"id": index, "file_name": sample.image.name, "width": sample.width, "height": sample.height})
            masks = instance_masks(sample.shapes, sample.width, sample.height)
            for mask, box, class_name in zip(masks, sample.boxes, sample.classes):
                rle = coco_mask.encode(np.asfortranarray(mask))
                annotations.append({"id": len(annotations) + 1, "image_id": index,
                                    "category_id": names.index(class_name) + 1, "iscrowd": 0,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "area": float(coco_mask.area(rle)),
                                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        (folder / f"{name}.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
        entries[name] = {"ann-files": f"{name}.json", "data-roots": name}
    return entries


def layout_data(layout, data, folder, evaluate_on):
    """data.yaml of the dataset in layout, written under folder, its evaluate_on split (val or train) doubling as
    test (coco-seg has no test split; eval and optimize report on it), and as val too when that is train."""
    folder.mkdir(parents=True)
    if layout == "yolo-seg":
        ultralytics = yaml.safe_load(data.read_text())
        ultralytics.update(path=str((data.parent / ultralytics.get("path", ".")).resolve()),
                           val=ultralytics[evaluate_on], test=ultralytics[evaluate_on])
        (folder / "data.yaml").write_text(yaml.safe_dump(ultralytics, sort_keys=False))
        return folder / "data.yaml"
    splits, schema = load_splits(read_data_yaml(data), task="instance_segmentation")
    names = [label["name"] for label in schema["labels"]]
    writer = write_penn_fudan if layout == "penn-fudan" else write_coco_rle
    entries = writer(splits, names, folder)
    entries.update(val=entries[evaluate_on], test=entries[evaluate_on])
    (folder / "data.yaml").write_text(yaml.safe_dump({"data": entries}, sort_keys=False))
    return folder / "data.yaml"


def figures(folder):
    performance = json.loads((folder / "performance.json").read_text())
    return (f"mask mAP@0.5 {performance['segm_map_50']:.3f}  mAP@[.5:.95] {performance['segm_map_50_95']:.3f}  "
            f"box mAP@0.5 {performance['map_50']:.3f}  mAP@[.5:.95] {performance['map_50_95']:.3f}  "
            f"F1 {performance['f-measure']:.3f}")


def chain(layout, args):
    root = args.output / layout
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = layout_data(layout, args.data.resolve(), root / "data", args.evaluate_on)
    print(f"== {layout}: {data}", flush=True)
    output, seconds = otxlite("train", args.template, "--data", data, "--output", root / "train", "--no-pretrained",
                              "params", "--learning_parameters.num_iters", args.epochs,
                              "--model.kwargs.min_size", args.min_size, "--model.kwargs.max_size", args.max_size)
    print(f"train: {args.epochs} epochs in {seconds / 60:.1f} min", flush=True)
    otxlite("export", "--load-weights", root / "train" / "weights.pth", "--output", root / "export")
    output, seconds = otxlite("optimize", "--load-weights", root / "export" / "openvino.xml", "--data", data,
                              "--output", root / "int8")
    print(f"optimize: {seconds / 60:.1f} min; " + "; ".join(
        line.split("otxlite ", 1)[-1].strip() for line in output.splitlines() if "latency" in line or "faster" in line))
    for name, model in (("weights.pth", root / "train" / "weights.pth"), ("model.onnx", root / "export" / "model.onnx"),
                        ("openvino.xml", root / "export" / "openvino.xml"), ("INT8 openvino.xml", root / "int8" / "openvino.xml")):
        evaluation = root / "eval" / name.replace(" ", "-")
        otxlite("eval", "--load-weights", model, "--data", data, "--output", evaluation)
        print(f"eval {name:18} {figures(evaluation)}", flush=True)
    images = Path(read_data_yaml(data)["test"].data_roots or read_data_yaml(data)["test"].ann_files)
    otxlite("demo", "--load-weights", root / "int8" / "openvino.xml", "--input", images, "--output", root / "demo")
    otxlite("predict", "--load-weights", root / "int8" / "openvino.xml", "--input", images,
            "--output", root / "predictions.json")
    otxlite("deploy", "--load-weights", root / "int8" / "openvino.xml", "--output", root / "deploy.zip")
    with zipfile.ZipFile(root / "deploy.zip") as package:
        package.extractall(root / "deploy")
    subprocess.run([sys.executable, root / "deploy" / "run.py", images, "--json", root / "deploy.json"], check=True,
                   capture_output=True)
    predicted, deployed = (json.loads((root / name).read_text()) for name in ("predictions.json", "deploy.json"))
    pictures = sum(path.is_file() for path in (root / "demo").iterdir())
    print(f"demo: {pictures} pictures; predict: {len(predicted)} records with segmentation "
          f"{sum('segmentation' in r for r in predicted)}; deploy run.py: {len(deployed)} records, "
          f"{'identical to' if deployed == predicted else 'DIFFERENT from'} predict", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATASET)
    parser.add_argument("--layout", nargs="+", default=["yolo-seg", "penn-fudan", "coco-rle"],
                        choices=["yolo-seg", "penn-fudan", "coco-rle"])
    parser.add_argument("--template", default="maskrcnn_mobilenet_v3_large_fpn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--min-size", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--evaluate-on", choices=["val", "train"], default="val")
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-segmentation-chain"))
    args = parser.parse_args()
    for layout in args.layout:
        chain(layout, args)


if __name__ == "__main__":
    main()
