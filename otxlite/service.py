"""The HTTP service of `otxlite serve`, on FastAPI and uvicorn, for any model that the Model protocol describes.

Requests that arrive together run as one batch (up to max_batch_size, waiting at most batch_wait_ms for more). At
most max_queue requests wait; past that a request is answered 503 at once. Every error is a 4xx JSON
{"error": "..."} that names the problem, and the service goes on.

This file needs no torch and no otxlite: `otxlite deploy` copies it into each package as serve.py, where it serves
the packaged OpenVINO model (`python serve.py`), with only openvino, numpy, pillow and the server packages.
"""

import argparse
import asyncio
import base64
import binascii
import io
import json
import logging
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("otxlite")
IMAGE_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif",
               "image/webp": ".webp"}
KSERVE_INPUT, KSERVE_OUTPUT = "image", "detections"
PAGE = Path(__file__).with_name("serve_page.html")


class Model:
    """What the service needs of a model (otxlite's loaded models and the deploy package's both give it).

    name: the KServe model name; info: a dict for GET /model (task, backend, input_size, labels, label_schema);
    threshold: the default confidence threshold."""

    name: str
    info: dict
    threshold: float

    def decode(self, data, file_name):
        """An RGB array from an uploaded file; RequestError 400 or 413 naming what is wrong with it."""
        raise NotImplementedError

    def predict(self, images):
        """The raw detections of a list of RGB arrays, one per image (run on the service's model thread)."""
        raise NotImplementedError

    def records(self, found, shape, threshold, file_name):
        """One image's detections above threshold as COCO result records (image_id 1), as predict writes them."""
        raise NotImplementedError

    def explain(self, image):
        """(raw detections, {class name: saliency map as a base64 PNG}) of one RGB array, for ?explain=true."""
        raise RequestError(422, "explain=true: this service's model gives no saliency maps; serve a weights.pth "
                                "with `otxlite serve` for them.")


@dataclass(frozen=True)
class Limits:
    max_batch_size: int = 8
    batch_wait_ms: float = 5
    max_queue: int = 64
    max_body_mb: float = 20


class RequestError(Exception):
    """A bad request: answered with status and {"error": message}."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("otxlite_requests", "Requests answered, by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("otxlite_request_latency_seconds", "Time from request to answer", ["route"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("otxlite_batch_size", "Images per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = Gauge("otxlite_queue_depth", "Requests admitted and not yet answered",
                                 registry=self.registry)


class Batcher:
    """Groups waiting images into model calls on one worker thread; bounds how many may wait."""

    def __init__(self, predictor, limits, metrics):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.queue = asyncio.Queue()
        self.pending = 0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="otxlite-model")
        self.runner = None

    async def detect(self, image):
        """The model's raw detections of one RGB array; RequestError 503 when max_queue are waiting."""
        if self.pending >= self.limits.max_queue:
            raise RequestError(503, f"the service is busy ({self.pending} requests waiting, --max-queue "
                                    f"{self.limits.max_queue}); try again shortly.", {"Retry-After": "1"})
        self.pending += 1
        self.metrics.queue_depth.set(self.pending)
        try:
            return await self.enqueue(image)
        finally:
            self.pending -= 1
            self.metrics.queue_depth.set(self.pending)

    async def enqueue(self, image):
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((image, answer))
        return await answer

    def start(self):
        """Start grouping, on the running event loop."""
        self.runner = asyncio.get_running_loop().create_task(self.run())

    def stop(self):
        if self.runner is not None:
            self.runner.cancel()
        self.worker.shutdown(wait=True)

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while len(batch) < self.limits.max_batch_size:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
            batch = [(image, answer) for image, answer in batch if not answer.done()]  # a client that gave up
            if not batch:
                continue
            try:
                found = await self.call_model([image for image, _ in batch])
            except RequestError as err:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(err)
                continue
            for (_, answer), detections in zip(batch, found):
                if not answer.done():
                    answer.set_result(detections)

    async def call_model(self, images):
        """The model's raw detections of a batch of images, on the worker thread; RequestError 500 if it fails."""
        self.metrics.batch_size.observe(len(images))
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, self.predictor, images)
        except Exception as err:  # the model failed on this batch: its requests fail, the service goes on
            log.exception("The model failed on a batch of %d image(s).", len(images))
            raise RequestError(500, f"the model failed: {err}") from None


class Service:
    """One model, its batcher and metrics; the routes call it."""

    def __init__(self, model, limits, threshold=None, batcher=Batcher):
        self.model, self.limits = model, limits
        self.threshold = model.threshold if threshold is None else threshold
        self.metrics = Metrics()
        model.predict([np.zeros((64, 64, 3), np.uint8)])  # warm up: the first call compiles
        self.batcher = batcher(model.predict, limits, self.metrics)
        self.ready = False

    def info(self):
        return {"name": self.model.name, **self.model.info, "threshold": self.threshold, "pid": os.getpid()}

    def parse_threshold(self, value):
        if value is None:
            return self.threshold
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if not 0 <= threshold <= 1:
            raise RequestError(422, f"threshold {value!r}: give a number between 0 and 1.")
        return threshold

    async def predict(self, data, file_name, threshold, explain=False):
        """COCO result records for one encoded image, as `otxlite predict` writes them (image_id 1); with explain,
        {"detections": those records, "saliency": {class name: base64 PNG}} (run outside the batches)."""
        if not data:
            raise RequestError(400, "empty body: send an image (JPEG, PNG, BMP, TIFF or WebP).")
        image = self.model.decode(data, file_name)
        if explain:
            found, maps = await asyncio.get_running_loop().run_in_executor(None, self.model.explain, image)
            return {"detections": self.model.records(found, image.shape[:2], threshold, file_name), "saliency": maps}
        found = await self.batcher.detect(image)
        return self.model.records(found, image.shape[:2], threshold, file_name)


def parse_flag(name, value):
    """A query flag: true/1/yes or false/0/no (any case), absent for false; RequestError 422 otherwise."""
    if value is None or value.lower() in ("false", "0", "no"):
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    raise RequestError(422, f"{name} {value!r}: give true or false.")


def file_name_for(content_type, given=None):
    return given or "upload" + IMAGE_TYPES.get(content_type, "")


def kserve_image(body, headers):
    """The encoded image of a KServe v2 / Open Inference Protocol infer request: one BYTES element of the input
    "image", as base64 text in JSON "data", or raw in the binary-data extension that tritonclient sends."""
    header_length = headers.get("inference-header-content-length")
    try:
        if header_length is not None:
            length = int(header_length)
            request, binary = json.loads(body[:length]), body[length:]
        else:
            request, binary = json.loads(body), b""
        inputs = {tensor["name"]: tensor for tensor in request["inputs"]}
    except (ValueError, KeyError, TypeError) as err:
        raise RequestError(400, f"not a KServe v2 infer request ({type(err).__name__}: {err}); send JSON with "
                                f"\"inputs\": [{{\"name\": \"image\", \"datatype\": \"BYTES\", ...}}].") from None
    tensor = inputs.get(KSERVE_INPUT)
    if tensor is None or tensor.get("datatype") != "BYTES":
        raise RequestError(400, f"the infer request needs an input named {KSERVE_INPUT!r} of datatype BYTES "
                                f"holding one encoded image; it has {sorted(inputs)}.")
    if tensor.get("shape") not in ([1], [1, 1]):
        raise RequestError(400, f"input {KSERVE_INPUT!r} has shape {tensor.get('shape')}: send one image, shape [1].")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        element = binary[:size]
        if len(element) < 4 or struct.unpack("<I", element[:4])[0] != len(element) - 4:
            raise RequestError(400, "the binary data of input 'image' is not one length-prefixed BYTES element.")
        return element[4:], request
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise RequestError(400, "input 'image' needs \"data\": [\"<the image file, base64-encoded>\"].")
    try:
        return base64.b64decode(data[0], validate=True), request
    except (binascii.Error, ValueError):
        raise RequestError(400, "input 'image' data is not base64 text: base64-encode the image file.") from None


def create_app(model, limits=Limits(), threshold=None, batcher=Batcher):
    """The FastAPI application serving a Model (see the module's docstring). threshold: the default one (else
    the model's); batcher: the class that groups requests into model calls (Ray Serve's replicas pass theirs)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException

    service = Service(model, limits, threshold, batcher)

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        service.ready = True
        log.info("Serving %s (%s); ready.", model.name, model.info["backend"])
        yield
        service.ready = False
        service.batcher.stop()

    app = FastAPI(title="otxlite", lifespan=lifespan)
    app.state.service = service

    def error(status, message, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request, err):
        return error(err.status, err.message, err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, err):
        message = {404: f"no route {request.method} {request.url.path}; see GET / for the page and GET /model.",
                   405: f"{request.method} is not allowed on {request.url.path}."}.get(err.status_code, str(err.detail))
        return error(err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err):
        return error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))

    @app.middleware("http")
    async def measured(request, call_next):
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        length = int(request.headers.get("content-length") or 0)
        if length > limits.max_body_mb * 2**20:
            response = error(413, f"the body is {length / 2**20:.1f} MB; --max-body-mb is {limits.max_body_mb:g}.")
        else:
            response = await call_next(request)
        service.metrics.requests.labels(route, str(response.status_code)).inc()
        service.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def body_of(request):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_mb * 2**20:
                raise RequestError(413, f"the body is over --max-body-mb {limits.max_body_mb:g}.")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/predict")
    async def predict(request: Request, threshold: str | None = None, explain: str | None = None):
        """Detections for one image: multipart (any file field) or a raw body with an image content type."""
        threshold, explain = service.parse_threshold(threshold), parse_flag("explain", explain)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            form = await request.form()
            files = [value for value in form.values() if hasattr(value, "read")]
            if len(files) != 1:
                raise RequestError(400, f"a multipart request needs one image file field; it has {len(files)}.")
            data, name = await files[0].read(), Path(files[0].filename or "").name
            content_type = files[0].content_type
        elif content_type in IMAGE_TYPES or content_type == "application/octet-stream":
            data, name = await body_of(request), None
        else:
            raise RequestError(415, f"content type {content_type or 'none'}: send the image as multipart/form-data "
                                    f"or as a raw body with an image type ({', '.join(IMAGE_TYPES)}).")
        return await service.predict(data, file_name_for(content_type, name), threshold, explain)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/model")
    async def model_info():
        return service.info()

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2/health/ready")
    async def kserve_ready():
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/health/live")
    async def kserve_live():
        return {"live": True}

    def known(name):
        if name != model.name:
            raise RequestError(404, f"no model {name!r}; this service serves {model.name!r}.")

    @app.get("/v2/models/{name}")
    async def kserve_model(name: str):
        known(name)
        return {"name": model.name, "versions": ["1"], "platform": model.info["backend"],
                "inputs": [{"name": KSERVE_INPUT, "datatype": "BYTES", "shape": [1]}],
                "outputs": [{"name": KSERVE_OUTPUT, "datatype": "BYTES", "shape": [1]}]}

    @app.get("/v2/models/{name}/ready")
    async def kserve_model_ready(name: str):
        known(name)
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.post("/v2/models/{name}/infer")
    async def kserve_infer(name: str, request: Request):
        """The detections, as `POST /predict` answers them, in one BYTES output element of JSON text."""
        known(name)
        data, infer = kserve_image(await body_of(request), request.headers)
        threshold = service.parse_threshold((infer.get("parameters") or {}).get("threshold"))
        records = await service.predict(data, "upload", threshold)
        return {"model_name": model.name, "model_version": "1", "id": infer.get("id", ""),
                "outputs": [{"name": KSERVE_OUTPUT, "datatype": "BYTES", "shape": [1],
                             "data": [json.dumps(records)]}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    ROUTES = {route.path for route in app.routes}
    return app




class PackagedModel(Model):
    """The model of a deploy package, as serve.py beside its run.py serves it: run.py's Detector, no torch."""

    def __init__(self):
        import importlib.util

        spec = importlib.util.spec_from_file_location("run", Path(__file__).with_name("run.py"))
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
        self.run, self.detector = run, run.Detector()
        schema = json.loads((run.MODEL / "label_schema.json").read_text())
        self.name = run.MODEL.parent.name
        self.threshold = self.detector.config["confidence_threshold"]
        self.info = {"model": str(run.MODEL / "openvino.xml"), "task": schema["task"], "backend": "openvino",
                     "input_size": self.detector.config.get("input_size"), "labels": schema["labels"],
                     "label_schema": schema}

    def decode(self, data, file_name):
        from PIL import Image

        try:
            return self.run.read_image(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise RequestError(413, f"{file_name}: {err}") from None
        except (OSError, SyntaxError, ValueError) as err:
            reason = str(err).split(" <_io.")[0]
            kind = "a truncated image" if "truncated" in reason else "not a readable image"
            raise RequestError(400, f"{file_name}: {kind} ({reason}).") from None

    def predict(self, images):
        return [self.detector(image) for image in images]

    def records(self, found, shape, threshold, file_name):
        return self.run.coco_records(self.detector, found, shape, threshold, 1, file_name)


def run(app, host, port):
    """Serve app with uvicorn until SIGTERM or Ctrl-C, which finish the requests in flight, then exit status 0."""
    import uvicorn

    for stop in (signal.SIGTERM, signal.SIGINT):  # uvicorn shuts down gracefully, then raises the signal again:
        signal.signal(stop, lambda *_: None)      # a stop that finished its requests is then exit status 0
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def main():
    """`python serve.py` in a deploy package: serve the packaged model."""
    def at_least(low, kind):
        def parse(text):
            value = kind(text)
            if value < low:
                raise argparse.ArgumentTypeError(f"{text}: give {low} or more.")
            return value
        return parse

    parser = argparse.ArgumentParser(description="Serve the packaged model over HTTP: POST /predict, a page at /, "
                                                 "/health, /ready, /model, /metrics, KServe v2.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every one)")
    parser.add_argument("--port", type=at_least(0, int), default=8000)
    parser.add_argument("--threshold", type=float, help="default confidence threshold (default: the model's)")
    parser.add_argument("--max-batch-size", type=at_least(1, int), default=Limits.max_batch_size)
    parser.add_argument("--batch-wait-ms", type=at_least(0, float), default=Limits.batch_wait_ms)
    parser.add_argument("--max-queue", type=at_least(1, int), default=Limits.max_queue)
    parser.add_argument("--max-body-mb", type=at_least(0.001, float), default=Limits.max_body_mb)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limits = Limits(args.max_batch_size, args.batch_wait_ms, args.max_queue, args.max_body_mb)
    run(create_app(PackagedModel(), limits, args.threshold), args.host, args.port)


if __name__ == "__main__":
    main()
