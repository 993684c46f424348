"""otxlite: train, evaluate, export and optimize torchvision object detectors and instance segmentation.

The Python API (the CLI is a thin layer over it)::

    import otxlite
    engine = otxlite.Engine(data="samples/bccd/data.yaml", work_dir="runs/bccd")
    run = engine.train("ssdlite320_mobilenet_v3_large", pretrained=False)
    print(engine.evaluate().map_50)
    detections = otxlite.load(engine.export().model).predict("image.jpg")
"""

import logging

__version__ = "0.1.0"

logging.getLogger("otxlite").setLevel(logging.INFO)  # train.log records progress even without the CLI


class OtxliteError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback (exit status 2)."""


class DataError(OtxliteError):
    """A problem with one file (or record) of the user's dataset."""


class ModelFileError(OtxliteError):
    """A model file (weights.pth, model.onnx, openvino.xml) or its label_schema.json is missing or unreadable."""


class TemplateError(OtxliteError):
    """A template, or a `params` override of it, is unknown or invalid."""


class ArgumentError(OtxliteError):
    """Arguments that cannot go together, or a value out of range."""


class MessageFormatter(logging.Formatter):
    """otxlite's messages as they are, warnings (every skipped record or file, every counted problem) led by
    "warning: ", whichever command or stage logs them."""

    def format(self, record):
        message = super().format(record)
        return f"warning: {message}" if record.levelno == logging.WARNING else message


def setup_logging():
    """otxlite's messages to stderr; warnings start with "warning: "."""
    logger = logging.getLogger("otxlite")
    if not logger.handlers:
        console = logging.StreamHandler()
        console.setFormatter(MessageFormatter("%(message)s"))
        logger.addHandler(console)


def __getattr__(name):
    """The API's names (otxlite.Engine, otxlite.load, ...), imported on first use so that `import otxlite` stays light."""
    import importlib

    api = importlib.import_module("otxlite.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'otxlite' has no attribute {name!r}")
