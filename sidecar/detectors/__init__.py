"""Detectors score batches of series; importing this package registers the built-ins."""

from sidecar.detectors import statistical  # noqa: F401  (registers the built-in detectors)
from sidecar.detectors import adaptive  # noqa: F401  (registers the recommended default detector)
from sidecar.detectors import deep, ml  # noqa: F401  (registers the machine- and deep-learning detectors)
from sidecar.detectors.base import Detector, NotFittedError, ParamError, Scores, band_score
from sidecar.detectors.multivariate import (
    DEFAULT_MULTIVARIATE,
    MultivariateDetector,
    MultivariateScores,
    NotEnoughDataError,
    available_multivariate,
    build_multivariate,
    register_multivariate,
    replay_multivariate,
)
from sidecar.detectors.registry import DEFAULT_DETECTOR, DetectorSpecError, available, build, register

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_MULTIVARIATE",
    "Detector",
    "DetectorSpecError",
    "MultivariateDetector",
    "MultivariateScores",
    "NotEnoughDataError",
    "NotFittedError",
    "ParamError",
    "Scores",
    "available",
    "available_multivariate",
    "band_score",
    "build",
    "build_multivariate",
    "register",
    "register_multivariate",
    "replay_multivariate",
]
