"""otxlite: train, evaluate, export and optimize torchvision object detectors."""

__version__ = "0.1.0"


class OtxliteError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback."""
