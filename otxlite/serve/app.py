"""Standalone (no torch, no otxlite; `otxlite deploy` ships it as serve.py): the HTTP service of `otxlite serve`.

On FastAPI and uvicorn, for any model the Servable protocol describes. Requests that arrive together run as one batch
(up to max_batch_size, waiting at most batch_wait_ms for more). At most max_queue requests wait; past that a request
is answered 503 at once. A body is read up to max_body_mb however it arrives (413 past it), a request unanswered
after request_timeout_s gets 504 and its work is dropped, and with an API key every route but the health probes and
the page needs `Authorization: Bearer <key>`. Every error is a 4xx (or 5xx) JSON {"error": "..."} that names the
problem, a client that goes away is one log line, and the service goes on. Inside a package it serves the OpenVINO
model (`python serve.py`) with only openvino, numpy, pillow and the server packages.
"""

import argparse
import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

log = logging.getLogger("otxlite")
IMAGE_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif",
               "image/webp": ".webp"}
KSERVE_INPUT, KSERVE_OUTPUT = "image", "detections"
PAGE = Path(__file__).with_name("serve_page.html")
API_KEY_VARIABLE = "OTXLITE_API_KEY"
OPEN_ROUTES = ("/health", "/ready", "/v2/health/live", "/v2/health/ready", "/")  # no API key: probes, the page
QUERY_PARAMETERS = {"/predict": ("threshold", "explain")}  # every other route takes none


class Servable:
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
    request_timeout_s: float = 60


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


class Guard:
    """ASGI middleware in front of every route: the API key, the known query parameters, the body limit however the
    body arrives (Content-Length, chunked, multipart), the request timeout, one log line for a client that went
    away, and the request metrics."""

    def __init__(self, app, limits, api_key, metrics, routes):
        self.app, self.limits, self.metrics, self.routes = app, limits, metrics, routes
        self.api_key = api_key.encode() if api_key else None
        self.max_bytes = limits.max_body_mb * 2**20

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), []
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)
        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await respond(sending, refusal)
            else:
                await asyncio.wait_for(self.app(scope, self.limited(receive), sending), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s: no answer within --request-timeout-s %g; answered 504 and dropped its work.",
                        described(scope), self.limits.request_timeout_s)
            if not status:
                await respond(sending, RequestError(504, f"no answer within --request-timeout-s "
                                                         f"{self.limits.request_timeout_s:g}; try again later."))
        except ClientGone as gone:
            log.info("%s: %s", described(scope), gone)
            status.append(499)  # nginx's code for a client that closed the request; nothing is sent
        self.metrics.requests.labels(route, str(status[0] if status else 499)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def refusal(self, scope):
        """The RequestError that answers this request before its body is read, or None."""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        if self.api_key is not None and scope["path"] not in OPEN_ROUTES:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key):
                return RequestError(401, "this service needs its API key: send the header 'Authorization: Bearer "
                                         "<key>'." if "authorization" not in headers else "the API key is wrong.",
                                    {"WWW-Authenticate": "Bearer"})
        known = QUERY_PARAMETERS.get(scope["path"], ())
        unknown = [name for name, _ in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                   if name not in known]
        if unknown:
            takes = f"known: {', '.join(known)}" if known else "it takes none"
            return RequestError(400, f"unknown query parameter {unknown[0]!r} on {scope['path']}; {takes}.")
        length = headers.get("content-length", "0")
        if length.isdigit() and int(length) > self.max_bytes:
            return RequestError(413, f"the body is {int(length) / 2**20:.1f} MB, over --max-body-mb "
                                     f"{self.limits.max_body_mb:g}.")
        return None

    def limited(self, receive):
        """receive, raising RequestError 413 once the body passes the limit and ClientGone when the client left."""
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone("the client went away before its request was read whole; dropped.")
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestError(413, f"the body is over --max-body-mb {self.limits.max_body_mb:g}; reading "
                                        f"stopped there.")
            return message
        return limited_receive


class ClientGone(Exception):
    """The client closed its connection before the whole request was read."""


async def respond(send, err):
    """Send err as a JSON response through an ASGI send."""
    body = json.dumps({"error": err.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((name.lower().encode(), value.encode()) for name, value in err.headers.items())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def described(scope):
    client = scope.get("client") or ("?", 0)
    return f"{scope['method']} {scope['path']} from {client[0]}:{client[1]}"


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


class KServeParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    threshold: float | None = None
    binary_data_size: StrictInt | None = Field(None, ge=4)


class KServeTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    datatype: str
    shape: list[StrictInt]
    parameters: KServeParameters = Field(default_factory=KServeParameters)
    data: list[Any] | None = None


class KServeRequest(BaseModel):
    """The fields of a KServe v2 infer request that the service reads, with their JSON types."""
    model_config = ConfigDict(extra="allow")
    id: str = ""
    parameters: KServeParameters = Field(default_factory=KServeParameters)
    inputs: list[KServeTensor] = Field(min_length=1)


def kserve_image(body, headers):
    """(the encoded image, the KServeRequest) of a KServe v2 / Open Inference Protocol infer request: one BYTES
    element of the input "image", as base64 text in JSON "data", or raw in the binary-data extension that
    tritonclient sends. RequestError 400 naming the field for any other shape."""
    usage = "send JSON with \"inputs\": [{\"name\": \"image\", \"datatype\": \"BYTES\", ...}]."
    header_length = headers.get("inference-header-content-length")
    if header_length is not None and not (header_length.isdigit() and int(header_length) <= len(body)):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length!r}: give the length in bytes of "
                                f"the JSON header at the start of the body ({len(body)} bytes).")
    length = len(body) if header_length is None else int(header_length)
    try:
        request = KServeRequest.model_validate_json(body[:length])
    except ValidationError as err:
        problem = err.errors()[0]
        if problem["type"] in ("json_invalid", "model_type"):
            raise RequestError(400, f"not a KServe v2 infer request ({problem['msg']}); {usage}") from None
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
        raise RequestError(400, f"not a KServe v2 infer request: {field}: {problem['msg'].lower()} (got "
                                f"{json.dumps(problem['input'])[:80]}); {usage}") from None
    binary = body[length:]
    inputs = {tensor.name: tensor for tensor in request.inputs}
    tensor = inputs.get(KSERVE_INPUT)
    if tensor is None or tensor.datatype != "BYTES":
        raise RequestError(400, f"the infer request needs an input named {KSERVE_INPUT!r} of datatype BYTES "
                                f"holding one encoded image; it has {sorted(inputs)}.")
    if tensor.shape not in ([1], [1, 1]):
        raise RequestError(400, f"input {KSERVE_INPUT!r} has shape {tensor.shape}: send one image, shape [1].")
    size = tensor.parameters.binary_data_size
    if size is not None:
        element = binary[:size]
        if len(element) < 4 or struct.unpack("<I", element[:4])[0] != len(element) - 4:
            raise RequestError(400, "the binary data of input 'image' is not one length-prefixed BYTES element.")
        return element[4:], request
    data = tensor.data
    if data is None or len(data) != 1 or not isinstance(data[0], str):
        raise RequestError(400, "input 'image' needs \"data\": [\"<the image file, base64-encoded>\"].")
    try:
        return base64.b64decode(data[0], validate=True), request
    except (binascii.Error, ValueError):
        raise RequestError(400, "input 'image' data is not base64 text: base64-encode the image file.") from None


def create_app(model, limits=Limits(), threshold=None, batcher=Batcher, api_key=None):
    """The FastAPI application serving a Servable (see the module's docstring). threshold: the default one (else
    the model's); batcher: the class that groups requests into model calls (Ray Serve's replicas pass theirs);
    api_key: when given, the Bearer token that every route but the health probes and the page needs."""
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
            data, name = await request.body(), None
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
        data, infer = kserve_image(await request.body(), request.headers)
        threshold = service.parse_threshold(infer.parameters.threshold)
        records = await service.predict(data, "upload", threshold)
        return {"model_name": model.name, "model_version": "1", "id": infer.id,
                "outputs": [{"name": KSERVE_OUTPUT, "datatype": "BYTES", "shape": [1],
                             "data": [json.dumps(records)]}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    app.add_middleware(Guard, limits=limits, api_key=api_key, metrics=service.metrics,
                       routes={route.path for route in app.routes})
    app.state.api_key = api_key
    return app




class PackagedModel(Servable):
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

    warn_if_open(host, app.state.api_key)
    for stop in (signal.SIGTERM, signal.SIGINT):  # uvicorn shuts down gracefully, then raises the signal again:
        signal.signal(stop, lambda *_: None)      # a stop that finished its requests is then exit status 0
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def warn_if_open(host, api_key):
    """A warning when the service listens beyond loopback without an API key."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not api_key:
        log.warning("Listening on %s without an API key: anyone who can reach this port can use the model. Set "
                    "--api-key (or %s) to require 'Authorization: Bearer <key>'.", host, API_KEY_VARIABLE)


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
    parser.add_argument("--request-timeout-s", type=at_least(0.001, float), default=Limits.request_timeout_s,
                        help="answer 504 to a request still unanswered after this long")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"require 'Authorization: Bearer <key>' (default: ${API_KEY_VARIABLE})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limits = Limits(args.max_batch_size, args.batch_wait_ms, args.max_queue, args.max_body_mb, args.request_timeout_s)
    run(create_app(PackagedModel(), limits, args.threshold, api_key=args.api_key), args.host, args.port)


if __name__ == "__main__":
    main()
