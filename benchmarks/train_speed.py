"""Training speed: `otxlite train` against a plain torchvision loop: same model, images, batch size and steps.

Usage: python benchmarks/train_speed.py [--templates ID ...] [--images 64] [--epochs 2] [--device cpu|cuda]
       python benchmarks/train_speed.py --devices 1 2 [--engine local|ray] [...]

Each variant runs in a child process of its own, so its peak memory is its own: the largest resident set of
the child (or of a DataLoader worker it waited for), from the kernel's accounting (wait4's ru_maxrss).
- otxlite: otxlite.engine.train.train on the first --images BCCD train images (val: 8 BCCD val images), random init,
  twice: with flips only (the plain loop's augmentation), and with the template's own augmentation recipe
  (decoded and augmented in the DataLoader workers). images/s = training images / training seconds, as
  otxlite logs them per epoch (its validation, checkpoint and plot writing excluded); "wall" is the whole
  run including those.
- plain: the loop below in the style of torchvision's references/detection: XML parsed with ElementTree,
  PIL decode, PILToTensor + float scaling, random horizontal flip, a DataLoader with the template's batch
  size and workers, SGD with linear warm-up, AMP on CUDA. The model comes from the same torchvision builder
  with the same arguments; both run the same number of optimizer steps.
- --devices 1 2 ...: otxlite with the template's recipe in that many DDP processes (--engine ray: Ray Train
  workers), each taking the template's batch size; images/s, scaling efficiency (images/s over N times that of
  the first count), the last epoch's val mAP@0.5 and the wall time.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional

ROOT = Path(__file__).resolve().parent.parent
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "BCCD"
DATA = BCCD if BCCD.is_dir() else ROOT / "samples" / "bccd-mini"
CLASSES = ("WBC", "RBC", "Platelets")


def split_ids(name, count):
    return (DATA / "ImageSets" / "Main" / f"{name}.txt").read_text().split()[:count]


# ---------------------------------------------------------------- the plain loop


class VocImages(torch.utils.data.Dataset):
    def __init__(self, ids, train=True):
        self.ids, self.train = ids, train

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        root = ET.parse(DATA / "Annotations" / f"{self.ids[index]}.xml").getroot()
        objects = [o for o in root.iter("object")
                   if float(o.find("bndbox").findtext("xmax")) > float(o.find("bndbox").findtext("xmin"))]
        boxes = torch.tensor([[float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                              for o in objects]).reshape(-1, 4)
        labels = torch.tensor([CLASSES.index(o.findtext("name")) + 1 for o in objects], dtype=torch.int64)
        image = functional.pil_to_tensor(Image.open(DATA / "JPEGImages" / f"{self.ids[index]}.jpg").convert("RGB"))
        image = functional.convert_image_dtype(image, torch.float32)
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
        return image, {"boxes": boxes, "labels": labels}


def collate(batch):
    return tuple(zip(*batch))


def plain_loop(template, ids, epochs, device):
    params = template["hyper_parameters"]["learning_parameters"]
    builder = getattr(torchvision.models.detection, template["model"]["architecture"])
    model = builder(weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1,
                    **template["model"].get("kwargs", {})).to(device)
    loader = torch.utils.data.DataLoader(VocImages(ids), batch_size=params["batch_size"], shuffle=True,
                                         num_workers=params["num_workers"], collate_fn=collate,
                                         pin_memory=device.type == "cuda", drop_last=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=params["learning_rate"],
                                momentum=params["momentum"], weight_decay=params["weight_decay"])
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001,
                                               total_iters=min(params["warmup_iters"], len(loader)))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    seconds = 0.0
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for images, targets in loader:
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            warmup.step()
        seconds += time.perf_counter() - started
    return {"images_per_s": len(ids) * epochs / seconds}


# ---------------------------------------------------------------- otxlite


def otxlite_run(template, ids, epochs, device, folder, augmentation, devices=1, engine="local"):
    from otxlite.core.ray_cluster import ray_switch
    from otxlite.data.specs import SplitSpec
    from otxlite.engine.train import train

    train_list, val_list = folder / "train.txt", folder / "val.txt"
    train_list.write_text("\n".join(ids) + "\n")
    val_list.write_text("\n".join(split_ids("val", 8)) + "\n")
    specs = {name: SplitSpec(name, DATA, DATA / "JPEGImages", image_list=listing)
             for name, listing in (("train", train_list), ("val", val_list))}
    template["hyper_parameters"]["learning_parameters"]["enable_early_stopping"] = False
    started = time.perf_counter()
    # one pass over the images an epoch: the plain loop's steps
    overrides = {"learning_parameters.num_iters": str(epochs), "learning_parameters.adaptive_repeat": "false"}
    if augmentation == "flip":
        overrides["augmentation"] = "{RandomHorizontalFlip: {p: 0.5}}"
    train(template, specs, folder / "run", overrides, pretrained=False, device=device.type,
          devices=1 if engine == "ray" else devices,
          ray=ray_switch(engine, "train", workers=devices if engine == "ray" else None))
    wall = time.perf_counter() - started
    with open(folder / "run" / "logs" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    train_seconds = sum(len(ids) / float(r["images_per_s"]) for r in rows)
    return {"images_per_s": len(ids) * epochs / train_seconds, "wall_s": wall, "map_50": float(rows[-1]["val_map_50"])}


# ---------------------------------------------------------------- running both


def child(args):
    from otxlite.models.templates import resolve_template

    torch.manual_seed(0)
    template, device = resolve_template(args.templates[0]), torch.device(args.device)
    ids = split_ids("train", args.images)
    with tempfile.TemporaryDirectory() as folder:
        result = (plain_loop(template, ids, args.epochs, device) if args.child == "plain" else
                  otxlite_run(template, ids, args.epochs, device, Path(folder), args.child.removeprefix("otxlite-"),
                              args.devices[0] if args.devices else 1, args.engine))
    Path(args.result).write_text(json.dumps(result))


def measure(variant, template_id, args, devices=1):
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--child", variant, "--templates", template_id, "--images",
                   str(args.images), "--epochs", str(args.epochs), "--device", args.device, "--result", result.name,
                   "--devices", str(devices), "--engine", args.engine]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        if status:
            raise SystemExit(f"{variant} run of {template_id} failed (status {status}).")
        return {**json.loads(Path(result.name).read_text()), "peak_mib": usage.ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="+",
                        default=["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--devices", type=int, nargs="+", help="compare otxlite in this many processes (DDP)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--child", choices=["otxlite-flip", "otxlite-template", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from otxlite.core.report import format_table

    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"{args.images} BCCD images, {args.epochs} epochs, {name}, torch {torch.__version__}", flush=True)
    if args.devices:
        return scaling(args)
    rows = []
    for template_id in args.templates:
        plain, ours = measure("plain", template_id, args), measure("otxlite-flip", template_id, args)
        full = measure("otxlite-template", template_id, args)
        rows.append((template_id, f"{plain['images_per_s']:.2f}", f"{ours['images_per_s']:.2f}",
                     f"{ours['images_per_s'] / plain['images_per_s']:.2f}x", f"{full['images_per_s']:.2f}",
                     f"{full['images_per_s'] / ours['images_per_s']:.2f}x", f"{ours['wall_s']:.0f}",
                     f"{plain['peak_mib']:.0f}", f"{ours['peak_mib']:.0f}", f"{full['peak_mib']:.0f}"))
        print(rows[-1], flush=True)
    print(format_table(("template", "plain img/s", "otxlite flip img/s", "vs plain", "otxlite template img/s",
                        "vs flip", "otxlite flip wall s", "plain peak MiB", "flip peak MiB", "template peak MiB"),
                       rows))


def scaling(args):
    """otxlite with the template's recipe in 1, 2, ... processes."""
    from otxlite.core.report import format_table

    rows = []
    for template_id in args.templates:
        first = None
        for devices in args.devices:
            run = measure("otxlite-template", template_id, args, devices)
            first = first or (devices, run["images_per_s"])
            efficiency = run["images_per_s"] / (devices / first[0] * first[1])
            rows.append((template_id, f"{devices} ({args.engine})", f"{run['images_per_s']:.2f}", f"{efficiency:.2f}",
                         f"{run['map_50']:.3f}", f"{run['wall_s']:.0f}"))
            print(rows[-1], flush=True)
    print(format_table(("template", "processes", "img/s", "scaling efficiency", "val mAP@0.5", "wall s"), rows))


if __name__ == "__main__":
    main()
