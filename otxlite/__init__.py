"""otxlite: train, evaluate, export and optimize torchvision object detectors."""

import logging

__version__ = "0.1.0"

logging.getLogger("otxlite").setLevel(logging.INFO)  # train.log records progress even without the CLI


class OtxliteError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback."""


def setup_logging():
    """otxlite's messages to stderr, without decoration."""
    logger = logging.getLogger("otxlite")
    if not logger.handlers:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
