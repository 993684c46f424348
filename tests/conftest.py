import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from otxlite.templates import resolve_template

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "bccd-mini"


def sample_ids(split, count):
    return (SAMPLE / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]


def copy_voc(ids, ann_dir, image_dir):
    """Copy sample images and their XML files into two plain folders."""
    ann_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copy(SAMPLE / "Annotations" / f"{image_id}.xml", ann_dir)
        shutil.copy(SAMPLE / "JPEGImages" / f"{image_id}.jpg", image_dir)


def voc_boxes(xml_path):
    root = ET.parse(xml_path).getroot()
    return [(o.findtext("name"), [float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


@pytest.fixture
def tiny_voc(tmp_path):
    """data.yaml over two train and two val images, as folders of XML files and of images."""
    copy_voc(sample_ids("train", 2), tmp_path / "train" / "xml", tmp_path / "train" / "images")
    copy_voc(sample_ids("val", 2), tmp_path / "val" / "xml", tmp_path / "val" / "images")
    data = tmp_path / "data.yaml"
    data.write_text("data:\n"
                    "  train: {ann-files: train/xml, data-roots: train/images}\n"
                    "  val: {ann-files: val/xml, data-roots: val/images}\n")
    return data


def write_coco(path, images, categories, annotations):
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    return path


@pytest.fixture
def small_template(tmp_path):
    """Write a copy of a template at a small input size, so that tests train fast; returns its path."""
    def make(template_id, min_size=128, max_size=160):
        template = resolve_template(template_id)
        if "min_size" in template["model"]["kwargs"]:
            template["model"]["kwargs"].update(min_size=min_size, max_size=max_size)
        template["hyper_parameters"]["learning_parameters"].update(batch_size=2, num_workers=0)
        del template["path"]
        import yaml

        path = tmp_path / "templates" / template_id / "template.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(template))
        return path
    return make
