"""Detectors score batches of series; importing this package registers the built-ins."""

from sidecar.detectors import statistical  # noqa: F401  (registers the built-in detectors)
from sidecar.detectors.base import Detector, NotFittedError, ParamError, Scores, band_score
from sidecar.detectors.registry import DEFAULT_DETECTOR, DetectorSpecError, available, build, register

__all__ = [
    "DEFAULT_DETECTOR",
    "Detector",
    "DetectorSpecError",
    "NotFittedError",
    "ParamError",
    "Scores",
    "available",
    "band_score",
    "build",
    "register",
]
