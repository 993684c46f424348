"""Datasets: data.yaml, COCO JSON and Pascal VOC annotations, label schemas, and torch loading."""

import colorsys
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from otxlite import OtxliteError
from otxlite.files import label_names, read_json, read_yaml

log = logging.getLogger("otxlite")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(OtxliteError):
    """A problem with one file of the user's dataset."""


@dataclass
class Sample:
    """One image and its boxes (x1, y1, x2, y2 in pixels) with class names."""

    image: Path
    source: str  # the annotation file (and record) the boxes came from, for messages
    boxes: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    width: int = 0
    height: int = 0


@dataclass
class SplitSpec:
    """Where one split's annotations and images are."""

    name: str
    ann_files: Path
    data_roots: Path | None = None
    format: str | None = None


@dataclass
class Split:
    name: str
    samples: list
    class_order: list  # class names in the order the format defines (COCO ids, or first appearance)


# ---------------------------------------------------------------- where the data is


def read_data_yaml(path):
    """{split name: SplitSpec} from an OTX-style data.yaml; relative paths are from its folder."""
    path = Path(path)
    config = read_yaml(path)
    splits = config.get("data") if isinstance(config, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise OtxliteError(f"{path}: expected a 'data:' mapping with train/val/test splits (see data.yaml.example).")
    specs = {}
    for name, entry in splits.items():
        if not isinstance(entry, dict) or "ann-files" not in entry:
            raise OtxliteError(f"{path}: split '{name}' needs 'ann-files' (and usually 'data-roots').")
        unknown = set(entry) - {"ann-files", "data-roots", "format"}
        if unknown:
            raise OtxliteError(f"{path}: split '{name}' has unknown keys {sorted(unknown)}; "
                               f"use ann-files, data-roots, format.")
        roots = entry.get("data-roots")
        specs[name] = SplitSpec(name, path.parent / entry["ann-files"],
                                path.parent / roots if roots else None, entry.get("format"))
    return specs


def split_specs(data=None, **paths):
    """Splits from --data and/or --<split>-ann-files/--<split>-data-roots (the flags win)."""
    specs = read_data_yaml(data) if data else {}
    for name in SPLITS:
        ann_files, data_roots = paths.get(f"{name}_ann_files"), paths.get(f"{name}_data_roots")
        if ann_files:
            specs[name] = SplitSpec(name, Path(ann_files), Path(data_roots) if data_roots else None)
        elif data_roots:
            raise OtxliteError(f"--{name}-data-roots needs --{name}-ann-files too.")
    return specs


def require_splits(specs, *names):
    missing = [n for n in names if n not in specs]
    if missing:
        raise OtxliteError(f"No {' or '.join(missing)} split given: add it to data.yaml or pass "
                           f"--{missing[0]}-ann-files and --{missing[0]}-data-roots.")


# ---------------------------------------------------------------- annotation formats


def load_coco(spec):
    """A COCO detection JSON file; images relative to data_roots (default: the JSON's folder)."""
    path = spec.ann_files
    coco = read_json(path)
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories' lists).")
    root = spec.data_roots or path.parent
    try:
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        samples = {img["id"]: Sample(root / img["file_name"], f"{path} (image id {img['id']})")
                   for img in coco["images"]}
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed image or category record (missing {err}).") from None
    used = set()
    for index, ann in enumerate(coco["annotations"]):
        record = f"{path} (annotations[{index}])"
        try:
            sample, category, bbox = samples[ann["image_id"]], ann["category_id"], ann["bbox"]
        except (KeyError, TypeError) as err:
            raise DataError(f"{record}: needs image_id of a listed image, category_id and bbox ({err}).") from None
        if category not in categories:
            raise DataError(f"{record}: category_id {category} is not in 'categories'.")
        x, y, w, h = parse_box(bbox, record)
        sample.boxes.append([x, y, x + w, y + h])
        sample.classes.append(categories[category])
        used.add(category)
    unused = [categories[c] for c in sorted(categories) if c not in used]
    if unused:
        log.info("%s: categories without annotations are left out: %s", path, ", ".join(unused))
    return Split(spec.name, list(samples.values()), [categories[c] for c in sorted(used)])


def load_voc(spec):
    """Pascal VOC: a root with Annotations/ and JPEGImages/, a split list, or a folder of XML files."""
    path = spec.ann_files
    if (path / "Annotations").is_dir():
        xml_dir, image_dir = path / "Annotations", spec.data_roots or path / "JPEGImages"
        split_list = path / "ImageSets" / "Main" / f"{spec.name}.txt"
        xml_files = list_voc_split(split_list, xml_dir) if split_list.is_file() else sorted(xml_dir.glob("*.xml"))
    elif path.is_file() and path.suffix == ".txt":
        root = path.parent.parent.parent
        xml_dir, image_dir = root / "Annotations", spec.data_roots or root / "JPEGImages"
        xml_files = list_voc_split(path, xml_dir)
    elif path.is_dir():
        xml_dir, image_dir = path, spec.data_roots or path
        xml_files = sorted(path.glob("*.xml"))
    else:
        raise DataError(f"{path}: not found.")
    if not xml_files:
        raise DataError(f"{xml_dir}: no .xml annotation files for split '{spec.name}'.")
    samples = [read_voc_xml(f, image_dir) for f in xml_files]
    return Split(spec.name, samples, list(dict.fromkeys(c for s in samples for c in s.classes)))


def list_voc_split(split_list, xml_dir):
    ids = [line.split()[0] for line in split_list.read_text().splitlines() if line.strip()]
    return [xml_dir / f"{image_id}.xml" for image_id in ids]


def read_voc_xml(path, image_dir):
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found (listed in the split).") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: unreadable XML ({err}). Fix or remove the file.") from None
    filename = root.findtext("filename") or f"{path.stem}.jpg"
    image = image_dir / filename
    if not image.suffix:  # some tools write the file name without its extension
        image = next((image.with_suffix(s) for s in IMAGE_SUFFIXES if image.with_suffix(s).exists()), image)
    sample = Sample(image, str(path))
    for index, obj in enumerate(root.iter("object")):
        record = f"{path} (object {index + 1})"
        box = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if box is None or not name:
            raise DataError(f"{record}: needs <name> and <bndbox>.")
        sample.boxes.append(parse_box([box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")], record))
        sample.classes.append(name)
    return sample


def parse_box(values, record):
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):  # not a list, or not numbers
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise DataError(f"{record}: box {values} is not four finite numbers.")
    return box


FORMATS = {"coco": load_coco, "voc": load_voc}


def detect_format(spec):
    path = spec.ann_files
    if spec.format:
        if spec.format not in FORMATS:
            raise OtxliteError(f"Unknown format '{spec.format}' for split '{spec.name}'. Known: {', '.join(FORMATS)}.")
        return spec.format
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if (path.is_dir() and ((path / "Annotations").is_dir() or any(path.glob("*.xml")))) or path.suffix == ".txt":
        return "voc"
    if not path.exists():
        raise DataError(f"{path}: not found (ann-files of split '{spec.name}').")
    raise DataError(f"{path}: cannot tell the annotation format of split '{spec.name}'. "
                    f"Give a COCO .json file or a Pascal VOC folder, or set 'format:'.")


# ---------------------------------------------------------------- checking and the label schema


def load_split(spec, known_classes=None):
    """Load, check and clean one split.

    Images must exist and be readable; boxes are clipped to the image; boxes left with
    zero area are dropped with one counted warning; a class outside known_classes is an error.
    """
    split = FORMATS[detect_format(spec)](spec)
    if not split.samples:
        raise DataError(f"{spec.ann_files}: split '{spec.name}' has no images.")
    dropped, clipped = [], 0
    for sample in split.samples:
        sample.width, sample.height = image_size(sample)
        kept_boxes, kept_classes = [], []
        for box, name in zip(sample.boxes, sample.classes):
            if known_classes is not None and name not in known_classes:
                raise DataError(f"{sample.source}: class '{name}' never appears in the training split "
                                f"(training classes: {', '.join(known_classes)}). Fix the label or add it to train.")
            inside = [min(max(box[0], 0), sample.width), min(max(box[1], 0), sample.height),
                      min(max(box[2], 0), sample.width), min(max(box[3], 0), sample.height)]
            clipped += inside != box
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                dropped.append(sample.source)
                continue
            kept_boxes.append(inside)
            kept_classes.append(name)
        sample.boxes, sample.classes = kept_boxes, kept_classes
    if clipped:
        log.warning("%s split: clipped %d box(es) that reached outside their image.", spec.name, clipped)
    if dropped:
        log.warning("%s split: dropped %d box(es) with zero area (or wholly outside the image): %s",
                    spec.name, len(dropped), "; ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    return split


def image_size(sample):
    try:
        with Image.open(sample.image) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{sample.source}: image {sample.image} not found. Check data-roots.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{sample.image}: unreadable image ({err}). Replace or remove it.") from None


def label_schema(class_names):
    """The label schema for classes in order: ids from 1 (0 is background), a distinct colour each."""
    return {"task": "detection",
            "labels": [{"id": i + 1, "name": name, "color": label_color(i)} for i, name in enumerate(class_names)]}


def label_color(index):
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def load_splits(specs, schema=None):
    """Load every split; the label schema comes from train unless one is given (e.g. by a model)."""
    if schema is None:
        require_splits(specs, "train")
        train = load_split(specs["train"])
        if not train.class_order:
            raise DataError(f"{specs['train'].ann_files}: the training split has no boxes.")
        schema = label_schema(train.class_order)
        splits = {"train": train}
    else:
        splits = {}
    names = label_names(schema)
    for name, spec in specs.items():
        if name not in splits:
            splits[name] = load_split(spec, known_classes=names)
    return splits, schema


# ---------------------------------------------------------------- torch side


class DetectionDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors with torchvision detection targets; flips horizontally when training."""

    def __init__(self, samples, schema, train=False):
        self.samples = samples
        self.label_ids = {label["name"]: label["id"] for label in schema["labels"]}
        self.train = train

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        try:
            with Image.open(sample.image) as file:
                image = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
        except OSError as err:
            raise DataError(f"{sample.image}: cannot decode image ({err}). Replace or remove it.") from None
        boxes = torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_ids[c] for c in sample.classes], dtype=torch.int64)
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
        return image, {"boxes": boxes, "labels": labels, "image_id": index}


def make_loader(samples, schema, params, device, train=False, seed=0):
    """Batches of (uint8 images, targets); training batches are shuffled, flipped and grouped by shape."""
    dataset = DetectionDataset(samples, schema, train=train)
    common = {"num_workers": params["num_workers"], "collate_fn": collate, "pin_memory": device.type == "cuda",
              "persistent_workers": params["num_workers"] > 0}
    if train:
        sampler = GroupedBatchSampler(samples, params["batch_size"], seed)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
    return torch.utils.data.DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, **common)


def collate(batch):
    return tuple(zip(*batch))


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches whose images are all wide or all tall, so padding wastes little.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, samples, batch_size, seed):
        self.wide = np.array([s.width >= s.height for s in samples])
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        yield from self.batches()

    def __len__(self):
        return len(self.batches())

    def batches(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.wide), generator=generator).numpy()
        batches = []
        for wide in (True, False):
            group = order[self.wide[order] == wide].tolist()
            chunks = [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            if len(chunks) > 1 and len(chunks[-1]) == 1 < self.batch_size:  # BatchNorm cannot train on one image
                chunks[-2] = chunks[-2] + chunks[-1]
                del chunks[-1]
            batches += chunks
        lone = [b for b in batches if len(b) == 1 < self.batch_size] if len(batches) > 1 else []
        for batch in lone:  # a group of one image joins another group's batch
            batches.remove(batch)
            batches[0] += batch
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
