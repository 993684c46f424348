"""Per-instance mask PNGs, as Penn-Fudan ships them: ann-files a folder of masks, data-roots a folder of images.

An image's mask is `<stem>_mask.png` or `<stem>.png`; each instance is one distinct non-zero value. With one
name every instance is that class; with several, an instance's class is names[value // 1000] (Cityscapes'
instance ids: class * 1000 + instance). An image without a mask file has no instances.
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from otxlite.data.formats.base import DataError, Sample, Split, images_in
from otxlite.data.formats.shapes import MaskValue, mask_box

MASK_SUFFIXES = ("_mask.png", ".png", "_mask.PNG", ".PNG")


def load_masks(spec):
    if spec.data_roots is None:
        raise DataError(f"{spec.ann_files}: mask PNGs need the images too: give the masks folder as ann-files and "
                        f"the images folder as data-roots.")
    if not spec.names:
        raise DataError(f"{spec.ann_files}: mask PNGs hold instance numbers, not classes; give the class name as "
                        f"'names: [pedestrian]' in data.yaml (one name: every instance is that class).")
    images = [image for image in images_in(spec.data_roots) if not image.is_relative_to(spec.ann_files)]
    masks = [mask_path(spec.ann_files, image.stem) for image in images]
    samples = [read_mask_file(image, mask, spec.names) for image, mask in zip(images, masks)]
    used = {c for s in samples for c in s.classes}
    pngs = [path for path in Path(spec.ann_files).rglob("*") if path.suffix.lower() == ".png"]
    orphans = sorted(set(pngs) - set(masks))
    return Split(spec.name, samples, [n for n in spec.names.values() if n in used], orphans=orphans,
                 unlabelled=tuple(image for image, mask in zip(images, masks) if mask is None))


def mask_path(folder, stem):
    return next((folder / f"{stem}{suffix}" for suffix in MASK_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                None)


def read_mask_file(image, path, names):
    """A sample with one box and MaskValue per instance value of the mask PNG at path (None: no instances)."""
    sample = Sample(image, str(path or image))
    if path is None:
        return sample
    try:
        with Image.open(path) as opened:
            values = np.asarray(opened)
            size = opened.size
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: unreadable mask image ({err}). Replace it.") from None
    if values.ndim != 2:
        raise DataError(f"{path}: a mask PNG must have one channel of instance numbers (mode L, P or I), "
                        f"not {values.shape[-1]} channels.")
    single = len(names) == 1
    for value in np.unique(values[values > 0]).tolist():
        record = f"{path} (value {value})"
        index = next(iter(names)) if single else value // 1000
        if index not in names:
            known = ", ".join(f"{i}: {n}" for i, n in names.items())
            raise DataError(f"{record}: class index {index} (value // 1000) is not in names ({known}).")
        sample.add(mask_box(values == value), names[index], record, shape=MaskValue(path, value, size))
    return sample
