"""`otxlite serve`: starting the HTTP app (otxlite.serve.app) for a model file, on uvicorn or on Ray Serve replicas.

The model is loaded as the API loads it (`otxlite.load`) and runs through the same predictor as `otxlite predict`,
so an image gets the same detections either way.
"""

import importlib.util

from otxlite.core.errors import ArgumentError, OtxliteError
from otxlite.serve.app import Limits, create_app, run
from otxlite.serve.served_model import LoadedModel


def serve(model_path, host="127.0.0.1", port=8000, device="auto", limits=Limits(), threshold=None, ray=None,
          api_key=None):
    """Run the service until SIGTERM or Ctrl-C, which finish the requests in flight and refuse new ones.
    ray: an OnRay (otxlite.core.ray_cluster) to serve on Ray Serve's replicas instead of in this process. api_key: when given, every route
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
            from otxlite.serve.ray_serve import serve_on_ray
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("ray"):
                raise
            raise OtxliteError("--engine ray needs Ray Serve: pip install 'otxlite[serve-ray]'.") from None
        return serve_on_ray(model_path, host, port, device, limits, threshold, ray, api_key)
    if not (importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")):
        raise OtxliteError("otxlite serve needs FastAPI and uvicorn: pip install 'otxlite[serve]'.") from None
    run(create_app(LoadedModel(model_path, device), limits, threshold, api_key=api_key), host, port)
