"""Annotation formats: each turns one split's files into samples; the format is named or detected."""

from otxlite.data.formats.base import DataError, EmbeddedImage, Sample, Split, SplitSpec
from otxlite.data.formats.coco import load_coco
from otxlite.data.formats.cvat import load_cvat
from otxlite.data.formats.labelme import load_labelme
from otxlite.data.formats.masks import load_masks
from otxlite.data.formats.tables import load_csv, load_dataframe, load_hf
from otxlite.data.formats.voc import load_voc
from otxlite.data.formats.yolo import load_yolo

FORMATS = {"coco": load_coco, "voc": load_voc, "yolo": load_yolo, "csv": load_csv, "dataframe": load_dataframe,
           "hf": load_hf, "masks": load_masks, "labelme": load_labelme, "cvat": load_cvat}
HF_FOLDER_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")

__all__ = ["FORMATS", "DataError", "EmbeddedImage", "Sample", "Split", "SplitSpec", "detect_format", "read_split"]


def read_split(spec):
    """The split's samples as its annotation files state them (not yet checked against the images)."""
    return FORMATS[detect_format(spec)](spec)


def detect_format(spec):
    if spec.format:
        if spec.format not in FORMATS:
            raise DataError(f"Unknown format '{spec.format}' for split '{spec.name}'. Known: {', '.join(FORMATS)}.")
        return spec.format
    path = spec.ann_files
    if not path.exists():
        raise DataError(f"{path}: not found (ann-files of split '{spec.name}').")
    suffix = path.suffix.lower()
    if path.is_file():
        by_suffix = {".json": "coco", ".csv": "csv", ".tsv": "csv", ".pkl": "dataframe", ".pickle": "dataframe",
                     ".parquet": parquet_format(path), ".txt": "voc" if path.parent.name == "Main" else "yolo",
                     ".xml": "cvat"}
        if suffix in by_suffix:
            return by_suffix[suffix]
    elif not any(path.iterdir()):
        raise DataError(f"{path}: empty folder; split '{spec.name}' has no annotations.")
    elif any((path / f).exists() for f in HF_FOLDER_FILES):
        return "hf"
    elif (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return "voc"
    elif any(path.glob("*.parquet")):
        return parquet_format(next(path.glob("*.parquet")))
    elif spec.data_roots and any(path.rglob("*.txt")) or (path.parent.parent / "labels" / path.name).is_dir():
        return "yolo"
    elif any(path.glob("*.json")):
        return "labelme"
    elif spec.data_roots and any(path.glob("*.png")):
        return "masks"
    raise DataError(f"{path}: cannot tell the annotation format of split '{spec.name}'. Give a COCO .json, a CVAT .xml, a VOC "
                    f"folder, YOLO labels, a folder of Labelme .json files, a folder of instance mask PNGs (with "
                    f"data-roots), a .csv, a DataFrame (.pkl/.parquet) or a Hugging Face dataset folder, "
                    f"or set 'format:' ({', '.join(FORMATS)}).")


def parquet_format(path):
    """Hugging Face parquet (its features in the metadata, or an `objects` column) or a plain DataFrame."""
    try:
        import pyarrow.parquet
        schema = pyarrow.parquet.read_schema(path)
    except Exception:  # no pyarrow, or not a parquet file: the DataFrame reader says which
        return "dataframe"
    return "hf" if b"huggingface" in (schema.metadata or {}) or "objects" in schema.names else "dataframe"
