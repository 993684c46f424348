"""The errors otxlite raises for the user's input, and how its messages reach the console (warnings led by
"warning: ")."""

import logging


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
