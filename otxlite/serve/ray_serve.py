"""`otxlite serve --engine ray`: the same service on Ray Serve replicas.

Each replica builds the embedded service's FastAPI app (`create_app`), so the routes, the answers and the page are
the same. Inside a replica, Ray Serve's `@serve.batch` groups the requests into model calls; Ray's proxy spreads
the requests over the replicas, bounds how many wait (`max_queued_requests`: 503 past it), scales the replicas
between a minimum and a maximum, and replaces a replica whose process dies.
"""

import logging
import signal
import threading
import traceback
from pathlib import Path

import ray
from ray import serve
from ray.serve.schema import LoggingConfig

from otxlite.core.errors import ModelFileError, OtxliteError
from otxlite.core.labels import LabelSchema
from otxlite.core.ray_cluster import init_ray
from otxlite.serve.app import Batcher, create_app, warn_if_open
from otxlite.serve.served_model import LoadedModel

log = logging.getLogger("otxlite")
QUIET = LoggingConfig(log_level="WARNING", enable_access_log=False)  # no line a request, in Ray's logs or ours


class RayBatcher(Batcher):
    """The embedded batcher's bound and model call, with Ray Serve's @serve.batch grouping the requests."""

    def __init__(self, predictor, limits, metrics):
        super().__init__(predictor, limits, metrics)
        self.grouped.set_max_batch_size(limits.max_batch_size)
        self.grouped.set_batch_wait_timeout_s(limits.batch_wait_ms / 1000)

    def start(self):
        """Nothing to start: Ray Serve runs the grouping."""

    async def enqueue(self, image):
        return await self.grouped(image)

    @serve.batch
    async def grouped(self, images):
        return await self.call_model(images)


class Replica:
    """One Ray Serve replica of the service: its app is built, and its model loaded, in the replica's process."""

    def __init__(self, model_path, device, limits, threshold, api_key):
        self.arguments = model_path, device, limits, threshold, api_key

    def __serve_build_asgi_app__(self):
        model_path, device, limits, threshold, api_key = self.arguments
        return create_app(LoadedModel(model_path, device), limits, threshold, RayBatcher, api_key)


def serve_on_ray(model_path, host, port, device, limits, threshold, scaling, api_key=None):
    """Serve on Ray Serve (a local Ray instance unless scaling.address) until SIGTERM or Ctrl-C."""
    if not Path(model_path).is_file():  # the replicas would fail on it, after Ray has started: say it now
        raise ModelFileError(f"{model_path}: file not found.")
    LabelSchema.read(model_path)
    if scaling.min_replicas is not None or scaling.max_replicas is not None:
        least = 1 if scaling.min_replicas is None else scaling.min_replicas
        replicas = {"autoscaling_config": {"min_replicas": least, "max_replicas": scaling.max_replicas or max(least, 1),
                                           "target_ongoing_requests": limits.max_batch_size}}
    else:
        replicas = {"num_replicas": scaling.replicas or 1}
    deployment = serve.deployment(
        serve.ingress()(Replica), name="otxlite", max_ongoing_requests=2 * limits.max_batch_size,
        max_queued_requests=scaling.max_queued_requests or limits.max_queue,
        ray_actor_options={"num_cpus": 1, "num_gpus": 1 if device == "cuda" else 0}, logging_config=QUIET, **replicas)
    warn_if_open(host, api_key)
    init_ray(scaling.address, logging_level="warning")
    stopped = threading.Event()
    for stop in (signal.SIGTERM, signal.SIGINT):  # in place of ray.init's handler, which exits at once
        signal.signal(stop, lambda *_: stopped.set())
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
        try:
            serve.run(deployment.bind(str(model_path), device, limits, threshold, api_key), name="otxlite",
                      route_prefix="/")
        except Exception as err:  # Ray's traceback says little more; the replica's own error is in the log above
            reason = "".join(traceback.format_exception_only(err)).strip().splitlines()[-1]
            raise OtxliteError(f"Ray Serve could not start the replicas ({reason}); their error is above.") from None
        log.info("Serving %s on Ray Serve; ready.", model_path)
        while not stopped.wait(1):  # a timeout, so that the main thread wakes for a signal another thread caught
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
