"""data.yaml and its splits: reading it (otxlite's or Ultralytics' form), split paths given as flags, writing it, and
holding out val."""

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from otxlite.core.errors import OtxliteError
from otxlite.core.files import read_text, read_yaml, write_atomic
from otxlite.data.formats import FORMATS, DataError, SplitSpec, read_split

log = logging.getLogger("otxlite")
SPLITS = ("train", "val", "test")
SPEC_KEYS = {"ann-files": "ann_files", "data-roots": "data_roots", "format": "format", "subset": "subset",
             "names": "names", "columns": "columns", "bbox-format": "bbox_format", "image-list": "image_list"}
PATH_KEYS = ("ann-files", "data-roots", "image-list")


# ---------------------------------------------------------------- where the data is


class SplitEntry(BaseModel):
    """One split of a data.yaml, as written (keys with dashes)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)
    ann_files: str | None = Field(None, alias="ann-files")
    data_roots: str | None = Field(None, alias="data-roots")
    format: Literal[tuple(FORMATS)] | None = None
    subset: str | None = None
    names: list[str | int] | dict[int, str | int] | None = None  # parse_names checks them
    columns: dict[str, str] | None = None
    bbox_format: Literal["xyxy", "xywh"] | None = Field(None, alias="bbox-format")
    image_list: str | None = Field(None, alias="image-list")

    @field_validator("format", "bbox_format", mode="before")
    @classmethod
    def lower_case(cls, value):
        return value.lower() if isinstance(value, str) else value


def checked_entry(entry, path, name):
    """A data.yaml split entry as a SplitEntry, or one error naming the file, the split and the key."""
    if not isinstance(entry, dict):
        raise OtxliteError(f"{path}: split '{name}' should be a mapping such as "
                           f"{{ann-files: ..., data-roots: ...}}, not {entry!r}.")
    try:
        return SplitEntry.model_validate(entry)
    except pydantic.ValidationError as err:
        problem = err.errors()[0]
        key = problem["loc"][0]
        if problem["type"] == "extra_forbidden":
            raise OtxliteError(f"{path}: split '{name}' has an unknown key '{key}'; use {', '.join(SPEC_KEYS)}.") from None
        raise OtxliteError(f"{path}: split '{name}', {key}: {problem['msg'].lower()} "
                           f"(got {problem['input']!r}).") from None


def read_data_yaml(path):
    """{split name: SplitSpec} from an OTX-style data.yaml (or an Ultralytics one); paths are from its folder."""
    path = Path(path).absolute()
    config = read_yaml(path)
    if isinstance(config, dict) and "data" not in config and "names" in config and "train" in config:
        return ultralytics_specs(path, config)
    splits = config.get("data") if isinstance(config, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise OtxliteError(f"{path}: expected a 'data:' mapping with train/val/test splits (see data.yaml.example).")
    unknown = set(config) - {"data", "names"}
    if unknown:
        raise OtxliteError(f"{path}: unknown top-level keys {sorted(unknown)}; use data (and names).")
    names = parse_names(config.get("names"), path)
    specs = {}
    for name, entry in splits.items():
        entry = checked_entry(entry, path, name)
        values = {attribute: getattr(entry, attribute) for attribute in SPEC_KEYS.values()}
        for key in PATH_KEYS:
            attribute = SPEC_KEYS[key]
            values[attribute] = values[attribute] and path.parent / values[attribute]
        values["names"] = parse_names(entry.names, path) or names
        specs[str(name)] = spec_for(str(name), path, **values)
    return specs


def spec_for(name, source, ann_files=None, data_roots=None, **values):
    """A SplitSpec; with data-roots alone, the annotations are found from the folder's layout."""
    if ann_files is None:
        if data_roots is None:
            raise OtxliteError(f"{source}: split '{name}' needs 'ann-files' or 'data-roots' (or both).")
        return root_spec(name, Path(data_roots), source, **values)
    return SplitSpec(name, Path(ann_files), Path(data_roots) if data_roots else None, **values)


def root_spec(name, root, source, **values):
    """The split of a dataset root whose layout says what it is: a VOC root (Annotations/), a COCO export
    folder (one .json, e.g. Roboflow's _annotations.coco.json, beside the images), or a YOLO root
    (images/ and labels/)."""
    if not root.is_dir():
        raise DataError(f"{root}: not found (data-roots of split '{name}' in {source}).")
    if (root / "Annotations").is_dir():
        return SplitSpec(name, root, None, **values)
    jsons = sorted(root.glob("*.json"))
    if len(jsons) == 1:
        return SplitSpec(name, jsons[0], root, **{**values, "format": values.get("format") or "coco"})
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return SplitSpec(name, root / "labels", root / "images", **{**values, "format": values.get("format") or "yolo"})
    raise DataError(f"{root}: cannot tell the dataset layout from data-roots alone (split '{name}' in {source}): expected "
                    f"Annotations/ (VOC), one .json file (COCO), or images/ and labels/ (YOLO). "
                    f"Give 'ann-files' too.")


def ultralytics_specs(path, config):
    """Splits of an Ultralytics data.yaml: `path` (the root, relative to this file), train/val/test, names."""
    root_value = config.get("path") or "."
    if not isinstance(root_value, (str, int, float)) or isinstance(root_value, bool):
        raise OtxliteError(f"{path}: 'path' should be the dataset's root folder, not {root_value!r}.")
    root = path.parent / str(root_value)
    names = parse_names(config["names"], path)
    specs = {}
    for name in SPLITS:
        source = config.get(name)
        if isinstance(source, list):
            if len(source) != 1:
                raise OtxliteError(f"{path}: split '{name}' lists {len(source)} folders; otxlite reads one folder "
                                   f"or one .txt list of images per split.")
            source = source[0]
        if source is not None and (not isinstance(source, (str, int, float)) or isinstance(source, bool)):
            raise OtxliteError(f"{path}: '{name}' should be an images folder or a .txt list, not {source!r}.")
        if source not in (None, ""):
            specs[name] = SplitSpec(name, root / str(source), format="yolo", names=names)
    if "train" not in specs:
        raise OtxliteError(f"{path}: an Ultralytics data.yaml needs 'train' (images folder or .txt list).")
    return specs


def parse_names(names, path):
    """Class names as {index: name}: from a YAML list (indices from 0), or a mapping such as Ultralytics'
    {0: person, 2: car} (indices may have gaps, as COCO's category ids do); no name twice."""
    if names is None:
        return None
    if isinstance(names, list):
        names = dict(enumerate(names))
    valid = isinstance(names, dict) and names and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 and isinstance(n, (str, int)) and str(n).strip()
        for i, n in names.items())
    if not valid:
        raise OtxliteError(f"{path}: 'names' should be a list of class names, or a mapping of class indices to "
                           f"names such as {{0: person, 2: car}}.")
    names = {i: str(n) for i, n in sorted(names.items())}
    repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if repeated:
        raise OtxliteError(f"{path}: 'names' repeats {', '.join(repeated)}; two classes cannot share a name.")
    return names


def split_specs(data=None, **paths):
    """Splits from --data and/or --<split>-ann-files/--<split>-data-roots (the flags win)."""
    specs = read_data_yaml(data) if data else {}
    for name in SPLITS:
        ann_files, data_roots = paths.get(f"{name}_ann_files"), paths.get(f"{name}_data_roots")
        if ann_files or data_roots:
            specs[name] = spec_for(name, f"--{name}-ann-files", ann_files and Path(ann_files).absolute(),
                                   data_roots and Path(data_roots).absolute())
    return specs


def in_split_order(names):
    """train, val, test first, then any other split names as given."""
    return [n for n in SPLITS if n in names] + [n for n in names if n not in SPLITS]


def require_splits(specs, *names):
    missing = [n for n in names if n not in specs]
    if missing:
        raise OtxliteError(f"No {' or '.join(missing)} split given: add it to data.yaml or pass "
                           f"--{missing[0]}-ann-files and --{missing[0]}-data-roots.")

def read_listed(spec):
    """The split as its files state it, restricted to its image-list (in the list's order) when it has one."""
    split = read_split(spec)
    if spec.image_list is None:
        return split
    index = {}
    for sample in split.samples:
        for key in {str(sample.image), sample.image.name, sample.image.stem}:
            index.setdefault(key, []).append(sample)
    lines = [line.strip() for line in read_text(spec.image_list).splitlines()]
    kept = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        matches = index.get(line, [])
        if len(matches) != 1:
            problem = "is not among" if not matches else "matches several images of"
            raise DataError(f"{spec.image_list} (line {number}): '{line}' {problem} the annotations of split "
                            f"'{spec.name}' ({spec.ann_files}). Use the image's path or a unique file name.")
        kept.append(matches[0])
    images = {sample.image for sample in kept}
    return replace(split, samples=kept, unlabelled=tuple(image for image in split.unlabelled if image in images))


def write_data_yaml(specs, path):
    """A data.yaml that reads back as specs: paths inside its folder relative to it, others absolute."""
    folder = Path(path).parent.absolute()

    def written(value):
        value = Path(value).absolute()
        return str(value.relative_to(folder)) if value.is_relative_to(folder) else str(value)

    splits = {}
    for name, spec in specs.items():
        entry = {key: getattr(spec, attribute) for key, attribute in SPEC_KEYS.items()}
        splits[name] = {k: written(v) if k in PATH_KEYS else v for k, v in entry.items() if v is not None}
    text = yaml.safe_dump({"data": splits}, sort_keys=False)
    write_atomic(path, lambda f: f.write(text.encode()))


def hold_out_val(specs, fraction, seed, output):
    """Hold out a seeded fraction of train as val; both saved as image lists in OUTPUT/data.yaml, returned as specs."""
    if "val" in specs:
        raise OtxliteError("--val-split: the data already has a val split. Drop --val-split, or the val split.")
    require_splits(specs, "train")
    images = [str(s.image) for s in read_listed(specs["train"]).samples]
    count = round(len(images) * fraction)
    if not 0 < fraction < 1 or not 0 < count < len(images):
        raise OtxliteError(f"--val-split {fraction}: the train split has {len(images)} images, so that holds out "
                           f"{count}. Give a fraction between 0 and 1 that leaves images on both sides.")
    held_out = set(random.Random(seed).sample(range(len(images)), count))
    output = Path(output)
    parts = {"train": [i for n, i in enumerate(images) if n not in held_out],
             "val": [i for n, i in enumerate(images) if n in held_out]}
    train = specs["train"]
    saved = dict(specs)
    for name, part in parts.items():
        listing = output / "splits" / f"{name}.txt"
        write_atomic(listing, lambda f, part=part: f.write(("\n".join(part) + "\n").encode()))
        saved[name] = replace(train, name=name, subset=train.subset or "train", image_list=listing)
    write_data_yaml({n: saved[n] for n in in_split_order(saved)}, output / "data.yaml")
    log.info("Held out %d of %d train images as val (--val-split %g, seed %d). Later stages see the same split "
             "with --data %s", count, len(images), fraction, seed, output / "data.yaml")
    return read_data_yaml(output / "data.yaml")


# ---------------------------------------------------------------- checking and cleaning


# ---------------------------------------------------------------- label schema


# ---------------------------------------------------------------- torch side


# ---------------------------------------------------------------- Ray side


