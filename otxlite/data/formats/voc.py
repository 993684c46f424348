"""Pascal VOC: a root with Annotations/ and JPEGImages/, a split list, or a folder of XML files."""

from otxlite.core.files import read_text
from otxlite.data.formats.base import IMAGE_SUFFIXES, DataError, Sample, Split, parse_box, read_xml


def load_voc(spec):
    path = spec.ann_files
    if (path / "Annotations").is_dir():
        xml_dir, image_dir = path / "Annotations", spec.data_roots or path / "JPEGImages"
        lists = path / "ImageSets" / "Main"
        split_list = lists / f"{spec.subset or spec.name}.txt"
        if split_list.is_file():
            xml_files = list_voc_split(split_list, xml_dir)
        elif spec.subset or lists.is_dir():  # a named or expected list is missing: never fall back to every file
            found = sorted(f.stem for f in lists.glob("*.txt")) if lists.is_dir() else []
            raise DataError(f"{split_list}: no such split list for split '{spec.name}'"
                            f"{' (subset: ' + spec.subset + ')' if spec.subset else ''}. "
                            f"Lists there: {', '.join(found) or 'none'}. Set 'subset:' to one of them.")
        else:
            xml_files = sorted(xml_dir.glob("*.xml"))
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
        raise DataError(f"{xml_dir}: no .xml annotation files for split '{spec.subset or spec.name}'.")
    samples = [read_voc_xml(f, image_dir) for f in xml_files]
    return Split(spec.name, samples, None)


def list_voc_split(split_list, xml_dir):
    ids = [line.split()[0] for line in read_text(split_list).splitlines() if line.strip()]
    return [xml_dir / f"{image_id}.xml" for image_id in ids]


def read_voc_xml(path, image_dir):
    root = read_xml(path, "annotation file not found (listed in the split).")
    filename = (root.findtext("filename") or "").strip() or f"{path.stem}.jpg"
    image = image_dir / filename
    if not image.suffix:  # some tools write the file name without its extension
        image = next((image.with_suffix(s) for s in IMAGE_SUFFIXES if image.with_suffix(s).exists()), image)
    sample = Sample(image, str(path), declared_size=declared_size(root))
    for index, obj in enumerate(root.iter("object")):
        record = f"{path} (object {index + 1})"
        box = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if box is None or not name:
            raise DataError(f"{record}: needs <name> and <bndbox>.")
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        sample.add(parse_box([box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")], record), name, record,
                   ignored=difficult)
    return sample


def declared_size(root):
    """(width, height) from <size>, or None when absent or not positive integers."""
    try:
        width, height = (int(float(root.findtext(f"size/{k}"))) for k in ("width", "height"))
    except (TypeError, ValueError, OverflowError):  # absent, not a number, or infinite
        return None
    return (width, height) if width > 0 and height > 0 else None
