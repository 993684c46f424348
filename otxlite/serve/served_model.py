"""A model file served: loaded as the API loads it (`otxlite.load`), behind the app's Servable interface,
so `otxlite serve` gives an image the same detections as `otxlite predict`."""

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite.core.errors import DataError, ModelFileError
from otxlite.data.formats.base import EmbeddedImage, decode_reporting_truncation
from otxlite.inference.backends import load_predictor
from otxlite.inference.model import load
from otxlite.serve.app import RequestError, Servable

BACKENDS = {".pth": "pytorch", ".onnx": "onnxruntime", ".xml": "openvino"}


class LoadedModel(Servable):
    """A model file loaded as the API loads it, as the app's Servable (see otxlite.serve.app)."""

    def __init__(self, path, device="auto"):
        self.loaded, self.path, self.device, self.explainer = load(path, device), path, device, None
        path, schema = Path(path), self.loaded.schema
        self.name = path.parent.name or path.stem
        self.threshold = self.loaded.confidence_threshold
        self.info = {"model": str(path), "task": self.loaded.task, "backend": BACKENDS[path.suffix],
                     "input_size": self.loaded.predictor.input_size, "labels": schema["labels"], "label_schema": schema}

    def decode(self, data, file_name):
        try:
            image, truncated = decode_reporting_truncation(EmbeddedImage(file_name, data))
        except DataError as err:  # over PIL's pixel limit
            raise RequestError(413, str(err)) from None
        except (OSError, SyntaxError, ValueError) as err:
            reason = str(err).split(" <_io.")[0]  # PIL names the buffer it read, which means nothing to a client
            raise RequestError(400, f"{file_name}: not a readable image ({reason}).") from None
        if truncated:
            raise RequestError(400, f"{file_name}: a truncated image ({truncated}); send the whole file.")
        return image

    def predict(self, images):
        return self.loaded.predictor(images)

    def records(self, found, shape, threshold, file_name):
        return self.loaded.detections(found, shape, threshold).to_coco(1, file_name)

    def explain(self, image):
        """Saliency maps as grey PNGs (a pixel's value / 255 is the class's probability there; the map spans the
        image), from a second copy of the model loaded with explain on at the first request."""
        if self.explainer is None:
            try:
                self.explainer = load_predictor(self.path, self.device, explain=True)
            except ModelFileError as err:
                raise RequestError(422, f"explain=true: {err}") from None
        found = self.explainer([image])[0]
        return found, {label["name"]: png_base64(saliency_map) for label, saliency_map in
                       zip(self.loaded.schema["labels"], found["saliency"])}


def png_base64(saliency_map):
    """A [h, w] map of probabilities as a base64 8-bit grey PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(saliency_map, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
