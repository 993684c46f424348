"""The confidence threshold: the one given, else the model's tuned one; a detection is kept when its score is above
it. predict, demo, explain, the API and the server use these two. The standalone deploy runner keeps a copy of
both, held to them by a parity test."""

import numpy as np

from otxlite.core.errors import ArgumentError


def confidence_threshold(given, tuned):
    """given (a confidence from 0 to 1), or the model's tuned threshold when none is given."""
    if given is None:
        return tuned
    given = float(given)
    if not 0 <= given <= 1:
        raise ArgumentError(f"threshold {given:g}: give a confidence between 0 and 1.")
    return given


def kept(scores, threshold):
    """The indices of the scores above threshold."""
    return np.flatnonzero(np.asarray(scores, dtype=np.float64).reshape(-1) > threshold)
