"""The detector interface and the score semantics every detector shares.

A detector works on a batch of series at once: ``X`` is a 2-D float array of shape
(n_series, n_time) on a shared time grid ``t`` (unix seconds, shape (n_time,)); NaN marks
a missing point. ``fit`` learns from history and returns ``self``; ``score`` scores later
points, causally (a point may use fitted state and earlier points of the same call, never
later ones), and returns :class:`Scores`.

Score semantics, identical for every detector: 0 when the value equals the expectation,
growing linearly with the deviation, exactly 1 at the edge of the band [lower, upper];
above 1 means anomalous. Series with too little history are not ready: all their outputs
are NaN rather than a garbage score.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np

#: Smallest band half-width, relative to max(1, |expected|): keeps constant series finite.
_EPS = 1e-9


class ParamError(ValueError):
    """A detector parameter has a bad value; ``param`` names it for config error paths."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


@dataclass(frozen=True)
class Scores:
    """Per-point outputs of a detector; every array has the shape of the scored batch."""

    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def take(self, index: Any) -> "Scores":
        """The same numpy index (rows, or rows and columns) applied to every array."""
        return Scores(self.score[index], self.expected[index], self.lower[index], self.upper[index])


def band_score(x: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Piecewise-linear score: 0 at ``expected``, 1 at ``lower``/``upper``, NaN where x or the band is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        above = x >= expected
        width = np.where(above, upper - expected, expected - lower)
        floor = _EPS * np.maximum(1.0, np.abs(expected))
        dev = np.abs(x - expected)
        score = dev / np.maximum(width, floor)
    # Deviation 0 is score 0 even for an infinite band; an infinite band gives 0 for finite x.
    return np.where(dev == 0, 0.0, score)


def check_batch(X: Any, t: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a batch: 2-D float ``X`` and 1-D increasing ``t`` of matching length."""
    X = np.asarray(X, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if X.ndim == 1:
        X = X[np.newaxis, :]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_series, n_time), got shape {X.shape}")
    if t.ndim != 1 or t.shape[0] != X.shape[1]:
        raise ValueError(f"t must be 1-D with {X.shape[1]} timestamps, got shape {t.shape}")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("t must be strictly increasing")
    # ±Inf cannot be scored meaningfully (a division by zero upstream): treat as missing.
    if not np.isfinite(X).all():
        X = np.where(np.isfinite(X), X, np.nan)
    return X, t


def nanquantile_rows(X: np.ndarray, qs: tuple[float, ...] | list[float]) -> list[np.ndarray]:
    """Per-row quantiles ignoring NaN (numpy's linear method), one sort for all of them.

    ``np.nanmedian``/``np.nanquantile`` fall back to a Python loop over rows when rows
    are long and hold NaN; sorting once (NaN sorts last) is ~10x faster on 10,000 series.
    All-NaN rows give NaN.
    """
    S = np.sort(X, axis=1)
    n = np.sum(~np.isnan(X), axis=1)
    last = np.maximum(n - 1, 0)
    out = []
    for q in qs:
        pos = q * last
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, last)
        a = np.take_along_axis(S, lo[:, None], axis=1)[:, 0] if S.shape[1] else np.full(S.shape[0], np.nan)
        b = np.take_along_axis(S, hi[:, None], axis=1)[:, 0] if S.shape[1] else a
        v = a + (b - a) * (pos - lo)
        out.append(np.where(n > 0, v, np.nan))
    return out


def nanmedian_rows(X: np.ndarray) -> np.ndarray:
    return nanquantile_rows(X, (0.5,))[0]


def fallback_spread(X: np.ndarray, center: np.ndarray, primary: np.ndarray) -> np.ndarray:
    """Return ``primary`` spread, falling back where it is 0 to the mean absolute deviation.

    Median-based spreads (MAD, IQR) are 0 whenever more than half the points are equal,
    which is the normal state of error counters and step-like series; the mean absolute
    deviation (scaled by 1.2533 to estimate a normal sigma) still sees the rare departures.
    """
    need = ~(primary > 0)
    if not need.any():
        return primary
    with quiet_nan_warnings():
        mean_ad = 1.2533 * np.nanmean(np.abs(X[need] - center[need, None]), axis=1)
    out = primary.copy()
    out[need] = mean_ad
    return out


@contextlib.contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' on all-NaN rows: those rows are not ready anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


class Params:
    """scikit-learn's parameter habits: keyword-only ``__init__`` arguments are the parameters."""

    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {name: sig.parameters[name].default for name in cls.param_names()}

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        defaults = self.param_defaults()
        changed = {k: v for k, v in self.get_params().items() if defaults.get(k) is not v and defaults.get(k) != v}
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({args})"


class Detector(Params):
    """Base class: stores parameters, checks batches, applies readiness and the score semantics.

    Subclasses define a keyword-only ``__init__`` that only stores its parameters, declare
    ``param_docs``, and implement ``_check_params``, ``_fit`` and ``_band``. ``_band`` returns
    (expected, lower, upper) for the scored points; the base class turns them into scores,
    and blanks not-ready series and missing points.
    """

    #: Registry name, e.g. "robust_zscore".
    name: ClassVar[str] = ""
    #: "statistical", "machine_learning" or "deep_learning".
    family: ClassVar[str] = "statistical"
    #: One line shown by ``anomaly-sidecar detectors``.
    summary: ClassVar[str] = ""
    #: Parameter name -> one-line description.
    param_docs: ClassVar[dict[str, str]] = {}
    #: True when fit/score use ``t`` only through its spacing, never absolute time; lets
    #: :func:`sidecar.replay.replay` stack many windows into one batch.
    time_invariant: ClassVar[bool] = False
    #: True when one model is learned from all series of the batch together (a global
    #: machine-learning model): rows are then not independent, so replay must not stack
    #: windows of different times into one batch, and a series' score depends on its peers.
    pools_series: ClassVar[bool] = False
    #: Seconds between refits when a query does not set ``refit_interval``: 0 refits every
    #: cycle (cheap detectors); costly fits recommend a cadence, their state stays valid.
    recommended_refit_interval: ClassVar[float] = 0.0

    min_history: int

    # -- parameters -------------------------------------------------------------------
    def check_params(self) -> "Detector":
        """Raise :class:`ParamError` naming the first bad parameter; used by config validation."""
        require_int(self, "min_history", minimum=1)
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Subclass hook: validate the detector's own parameters."""

    # -- fit / score -------------------------------------------------------------------
    def fit(self, X: Any, t: Any) -> "Detector":
        """Learn from history ``X`` (n_series, n_time) on grid ``t``; returns ``self``."""
        self.check_params()
        X, t = check_batch(X, t)
        self.n_series_ = X.shape[0]
        self.n_history_ = np.sum(~np.isnan(X), axis=1)
        self.ready_ = self.n_history_ >= self.min_history
        self.fit_end_ = float(t[-1]) if t.size else float("-inf")
        self._fit(X, t)
        return self

    def score(self, X: Any, t: Any) -> Scores:
        """Score the points of ``X``, which continue the fitted history row by row."""
        if not hasattr(self, "ready_"):
            raise NotFittedError(f"{type(self).__name__} must be fitted before score()")
        X, t = check_batch(X, t)
        if X.shape[0] != self.n_series_:
            raise ValueError(f"X has {X.shape[0]} series, the detector was fitted on {self.n_series_}")
        expected, lower, upper = self._band(X, t)
        score = self._score(X, expected, lower, upper)
        blank = ~self.ready_[:, None] | np.isnan(X)
        if blank.any():
            score = np.where(blank, np.nan, score)
            expected = np.where(~self.ready_[:, None], np.nan, expected)
            lower = np.where(~self.ready_[:, None], np.nan, lower)
            upper = np.where(~self.ready_[:, None], np.nan, upper)
        return Scores(score, expected, lower, upper)

    def _score(self, X: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Default score: the shared band semantics. Detectors that score otherwise override it."""
        return band_score(X, expected, lower, upper)

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        raise NotImplementedError

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


# -- parameter checks shared by detectors -------------------------------------------------
def require_number(
    det: Detector,
    param: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    optional: bool = False,
) -> None:
    value = getattr(det, param)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ParamError(param, f"must be a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        op = ">" if exclusive_minimum else ">="
        raise ParamError(param, f"must be {op} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ParamError(param, f"must be <= {maximum}, got {value!r}")


def require_int(det: Detector, param: str, *, minimum: int = 0) -> None:
    value = getattr(det, param)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(param, f"must be a whole number, got {value!r}")
    if value < minimum:
        raise ParamError(param, f"must be >= {minimum}, got {value!r}")


def require_duration(det: Detector, param: str, *, optional: bool = False) -> float | None:
    """Accept '30m' style strings or seconds; return seconds."""
    from sidecar.durations import parse_duration

    value = getattr(det, param)
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ParamError(param, str(exc)) from None
    if not seconds > 0:
        raise ParamError(param, f"must be a positive duration, got {value!r}")
    return seconds
