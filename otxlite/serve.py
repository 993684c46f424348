"""`otxlite serve`: a model file as an HTTP service (otxlite.service's app on uvicorn, or on Ray Serve replicas).

The model is loaded as the API loads it (`otxlite.load`) and runs through the same predictor as `otxlite predict`,
so an image gets the same detections either way.
"""

import base64
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from otxlite import ArgumentError, DataError, ModelFileError, OtxliteError
from otxlite.api import load
from otxlite.formats.base import EmbeddedImage, decode_reporting_truncation
from otxlite.predictors import load_predictor
from otxlite.service import Limits, Model, RequestError, create_app, run

BACKENDS = {".pth": "pytorch", ".onnx": "onnxruntime", ".xml": "openvino"}


class LoadedModel(Model):
    """A model file loaded as the API loads it, as the service's Model (see otxlite.service)."""

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


@dataclass(frozen=True)
class RayScaling:
    """Ray Serve's replicas: a fixed number, or autoscaling between min_replicas and max_replicas."""
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_queued_requests: int | None = None
    address: str | None = None

    def __post_init__(self):
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise ArgumentError("give --replicas, or --min-replicas and --max-replicas for autoscaling, not both.")


def serve(model_path, host="127.0.0.1", port=8000, device="auto", limits=Limits(), threshold=None, ray=None,
          api_key=None):
    """Run the service until SIGTERM or Ctrl-C, which finish the requests in flight and refuse new ones.
    ray: a RayScaling to serve on Ray Serve's replicas instead of in this process. api_key: when given, every route
    but the health probes and the page needs `Authorization: Bearer <api_key>`."""
    if limits.max_batch_size < 1 or limits.max_queue < 1 or limits.batch_wait_ms < 0 or limits.max_body_mb <= 0 \
            or limits.request_timeout_s <= 0:
        raise ArgumentError("--max-batch-size and --max-queue take 1 or more, --batch-wait-ms 0 or more, "
                            "--max-body-mb and --request-timeout-s a positive number.")
    if api_key is not None and (not api_key.strip() or api_key != api_key.strip()):
        raise ArgumentError("--api-key: give a key without spaces around it (it is compared as sent after "
                            "'Bearer ').")
    if ray is not None:
        try:
            from otxlite.serve_ray import serve_on_ray
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("ray"):
                raise
            raise OtxliteError("--engine ray needs Ray Serve: pip install 'otxlite[serve-ray]'.") from None
        return serve_on_ray(model_path, host, port, device, limits, threshold, ray, api_key)
    if not (importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")):
        raise OtxliteError("otxlite serve needs FastAPI and uvicorn: pip install 'otxlite[serve]'.") from None
    run(create_app(LoadedModel(model_path, device), limits, threshold, api_key=api_key), host, port)
