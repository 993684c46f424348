"""otxlite: train, evaluate, export and optimize torchvision object detectors and instance segmentation.

The Python API (the CLI is a thin layer over it)::

    import otxlite
    engine = otxlite.Engine(data="samples/bccd/data.yaml", work_dir="runs/bccd")
    run = engine.train("ssdlite320_mobilenet_v3_large", pretrained=False)
    print(engine.evaluate().map_50)
    detections = otxlite.load(engine.export().model).predict("image.jpg")
"""

import logging

from otxlite.core.errors import (
    ArgumentError,
    DataError,
    MessageFormatter,
    ModelFileError,
    OtxliteError,
    TemplateError,
    setup_logging,
)

__version__ = "0.1.0"
__all__ = ["ArgumentError", "DataError", "ModelFileError", "MessageFormatter", "OtxliteError", "TemplateError",
           "setup_logging"]

logging.getLogger("otxlite").setLevel(logging.INFO)  # train.log records progress even without the CLI


def __getattr__(name):
    """The API's names (otxlite.Engine, otxlite.load, ...), imported on first use so that `import otxlite` stays light."""
    import importlib

    api = importlib.import_module("otxlite.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'otxlite' has no attribute {name!r}")
