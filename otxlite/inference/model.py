"""The Python API's loaded model: `otxlite.load(path)` gives a Model that predicts on paths, PIL images or
arrays, and its Detections (boxes, scores, labels, names, masks; `.plot()`, `.to_coco()`)."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from otxlite.core.errors import ArgumentError, DataError
from otxlite.core.labels import LabelSchema
from otxlite.core.thresholds import confidence_threshold, kept


@dataclass
class Detections:
    """One image's detections scoring above the threshold: boxes [N, 4] (x1, y1, x2, y2 in the image's pixels),
    scores [N], labels [N] (label_schema ids), names [N], and for instance segmentation masks [N, H, W] (bool)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    schema: dict = field(repr=False)
    image_size: tuple  # (height, width)
    source: Path | None = None  # the image file, when predicted from one
    image: np.ndarray | None = field(default=None, repr=False)  # the HxWx3 RGB image, when given as pixels
    rles: list | None = field(default=None, repr=False)

    def __len__(self):
        return len(self.scores)

    @property
    def names(self):
        """The class name of each detection."""
        names = LabelSchema.of(self.schema).name_of
        return [names[int(label)] for label in self.labels]

    @property
    def masks(self):
        """[N, H, W] bool instance masks, or None for detection."""
        if self.rles is None:
            return None
        from pycocotools import mask as coco_mask

        if not self.rles:
            return np.zeros((0, *self.image_size), bool)
        return coco_mask.decode(self.rles).transpose(2, 0, 1).astype(bool)

    def to_coco(self, image_id=1, file_name=None):
        """COCO results, as `otxlite predict` writes them (bbox x, y, w, h; file_name, category_name; RLE
        segmentation for masks)."""
        from otxlite.inference.writers import detection_record

        if file_name is None:
            file_name = self.source.name if self.source else ""
        names = LabelSchema.of(self.schema).name_of
        return [detection_record(image_id, file_name, box, score, int(label), names,
                                 None if self.rles is None else self.rles[i])
                for i, (box, score, label) in enumerate(zip(self.boxes, self.scores, self.labels))]

    def plot(self, image=None):
        """A PIL image of the detections drawn (and masks filled) on image: by default the one predicted on."""
        from otxlite.core.visualize import draw_detections

        if image is None:
            image = self.image if self.image is not None else self.source
        if image is None:
            raise ArgumentError("These detections keep no image; pass the image to plot(image).")
        picture = Image.fromarray(as_rgb(image))
        found = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels,
                 **({"rles": self.rles} if self.rles is not None else {})}
        return draw_detections(picture, found, self.schema, threshold=-1.0)


def as_rgb(image):
    """An HxWx3 uint8 RGB array from a path, a PIL image (EXIF orientation applied) or an array (HxW grey,
    HxWx3 RGB or HxWx4 RGBA; uint8, or uint16 scaled down)."""
    from otxlite.inference.images import decode

    if isinstance(image, (str, Path)):
        decoded = decode(Path(image))
        if isinstance(decoded, str):
            raise DataError(f"{image}: unreadable image ({decoded}).")
        return decoded
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    array = np.asarray(image)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ArgumentError(f"An image array must be HxW or HxWx3 (RGB) of uint8; got {array.dtype} of shape "
                            f"{array.shape}.")
    if array.ndim == 2 or array.shape[2] == 1:
        array = np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


class Model:
    """A model file (weights.pth, model.onnx, or FP32/INT8 openvino.xml, label_schema.json beside it), loaded
    once to predict on paths, PIL images or arrays."""

    def __init__(self, path, device="auto"):
        from otxlite.inference.backends import load_predictor

        self.path = Path(path)
        self.predictor = load_predictor(path, device, throughput=True)
        self.schema = self.predictor.schema
        self.task = LabelSchema.of(self.schema).task
        self.names = LabelSchema.of(self.schema).names
        self.confidence_threshold = self.predictor.confidence_threshold

    def __repr__(self):
        return f"Model({str(self.path)!r}, task={self.task!r}, names={self.names})"

    def predict(self, source, threshold=None, batch_size=8):
        """Detections scoring above threshold (default: the model's tuned one).

        source: an image path, a PIL image or an HxWx3 array -> Detections; a folder, or a list of any of
        these -> a list of Detections in order (a folder's images sorted, unreadable ones skipped with a warning).
        """
        from otxlite.inference.images import detect_images, image_files

        threshold = confidence_threshold(threshold, self.confidence_threshold)
        is_path = isinstance(source, (str, Path))
        single = not isinstance(source, (list, tuple)) and not (is_path and Path(source).is_dir())
        units = []  # per image: (file, None) or (None, RGB array), in the order given
        for item in source if isinstance(source, (list, tuple)) else [source]:
            if isinstance(item, (str, Path)):
                units += [(file, None) for file in image_files(item)[0]]
            else:
                units.append((None, as_rgb(item)))
        files = [file for file, _ in units if file is not None]
        from_files = {index: (image, found) for index, _, image, found in
                      (detect_images(self.predictor, files, batch_size) if files else [])}
        arrays = [array for file, array in units if file is None]
        from_arrays = [found for start in range(0, len(arrays), batch_size)
                       for found in self.predictor(arrays[start:start + batch_size])]
        results, file_index, array_index = [], 0, 0
        for file, array in units:
            if file is not None:
                if file_index in from_files:  # else unreadable: detect_images warned and skipped it
                    image, found = from_files[file_index]
                    results.append(self.detections(found, image.shape[:2], threshold, source=file))
                file_index += 1
            else:
                results.append(self.detections(from_arrays[array_index], array.shape[:2], threshold, image=array))
                array_index += 1
        if single:
            if not results:
                raise DataError(f"{source}: unreadable image (see the warning above).")
            return results[0]
        return results

    def detections(self, found, image_size, threshold, source=None, image=None):
        keep = kept(found["scores"], threshold)
        return Detections(found["boxes"][keep], found["scores"][keep], found["labels"][keep].astype(np.int64),
                          self.schema, tuple(image_size), source and Path(source), image,
                          [found["rles"][i] for i in keep] if "rles" in found else None)


def load(path, device="auto"):
    """The model file at path, ready to predict: `otxlite.load("runs/x/openvino.xml").predict(image)`."""
    return Model(path, device)
