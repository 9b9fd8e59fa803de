"""Statistical detectors: static thresholds, z-score, robust z-score, quantile band, EWMA, seasonal.

Each learns a few numbers per series in ``fit`` with one vectorised numpy pass over the
whole batch, so 10,000 series cost about as much as one long series.
"""

from __future__ import annotations

import numpy as np

from sidecar.detectors.base import (
    Detector,
    ParamError,
    fallback_spread,
    nanmedian_rows,
    nanquantile_rows,
    quiet_nan_warnings,
    require_duration,
    require_int,
    require_number,
)
from sidecar.detectors.registry import register


def _tile(v: np.ndarray, n_time: int) -> np.ndarray:
    return np.broadcast_to(v[:, None], (v.shape[0], n_time))


class _CenterSpread(Detector):
    """Shared shape of detectors whose band is ``center ± sensitivity * spread`` learned in fit."""

    time_invariant = True

    sensitivity: float
    min_band: float

    def _check_params(self) -> None:
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_number(self, "min_band", minimum=0)

    def _center_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        with quiet_nan_warnings():
            center, spread = self._center_spread(X)
        self.center_ = center
        self.spread_ = np.maximum(np.nan_to_num(spread, nan=0.0), 0.0)

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = np.maximum(self.sensitivity * self.spread_, self.min_band)
        n = X.shape[1]
        return _tile(self.center_, n), _tile(self.center_ - half, n), _tile(self.center_ + half, n)


_SENS_DOC = "band half-width in units of the spread; score 1 at the band edge"
_MIN_HISTORY_DOC = "points of history a series needs before it is scored"
_MIN_BAND_DOC = "smallest band half-width, in the metric's unit (keeps near-constant series quiet)"


@register
class StaticThreshold(Detector):
    """Fixed bounds, for metrics with a known budget (e.g. p99 latency under 0.5 s)."""

    time_invariant = True

    name = "static_threshold"
    summary = "fixed min/max bounds; expected value is the history median kept inside them"
    param_docs = {
        "min": "lower bound (none: unbounded below)",
        "max": "upper bound (none: unbounded above)",
        "min_history": _MIN_HISTORY_DOC,
    }

    def __init__(self, *, min: float | None = None, max: float | None = None, min_history: int = 1) -> None:
        self.min = min
        self.max = max
        self.min_history = min_history

    def _check_params(self) -> None:
        require_number(self, "min", optional=True)
        require_number(self, "max", optional=True)
        if self.min is None and self.max is None:
            raise ParamError("max", "set min, max or both")
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ParamError("max", f"must be greater than min ({self.min}), got {self.max}")

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        lo = -np.inf if self.min is None else float(self.min)
        hi = np.inf if self.max is None else float(self.max)
        self.expected_ = np.clip(nanmedian_rows(X), lo, hi)
        self.lower_, self.upper_ = lo, hi

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = X.shape[1]
        exp = _tile(self.expected_, n)
        return exp, np.full_like(exp, self.lower_), np.full_like(exp, self.upper_)


@register
class ZScore(_CenterSpread):
    """Mean and standard deviation of the history: good for roughly normal, stable metrics."""

    name = "zscore"
    summary = "mean ± sensitivity × standard deviation of the history"
    param_docs = {"sensitivity": _SENS_DOC, "min_history": _MIN_HISTORY_DOC, "min_band": _MIN_BAND_DOC}

    def __init__(self, *, sensitivity: float = 3.0, min_history: int = 30, min_band: float = 0.0) -> None:
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band

    def _center_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.nanmean(X, axis=1), np.nanstd(X, axis=1)


@register
class RobustZScore(_CenterSpread):
    """Median and MAD: past spikes in the history do not widen the band (unlike mean/std)."""

    name = "robust_zscore"
    summary = "median ± sensitivity × 1.4826·MAD (mean absolute deviation where MAD is 0)"
    param_docs = {"sensitivity": _SENS_DOC, "min_history": _MIN_HISTORY_DOC, "min_band": _MIN_BAND_DOC}

    def __init__(self, *, sensitivity: float = 3.5, min_history: int = 30, min_band: float = 0.0) -> None:
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band

    def _center_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        median = nanmedian_rows(X)
        mad = 1.4826 * nanmedian_rows(np.abs(X - median[:, None]))
        return median, fallback_spread(X, median, mad)


@register
class QuantileBand(Detector):
    """Tukey fences: [Q1 - k·IQR, Q3 + k·IQR]; asymmetric, so it suits skewed metrics like latency."""

    time_invariant = True

    name = "quantile"
    summary = "Tukey fences [q_low - k·IQR, q_high + k·IQR] around the median"
    param_docs = {
        "q_low": "lower quantile of the box (0-1)",
        "q_high": "upper quantile of the box (0-1)",
        "k": "fence distance in box widths (1.5 = Tukey's inner fence, 3 = outer fence)",
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
    }

    def __init__(
        self, *, q_low: float = 0.25, q_high: float = 0.75, k: float = 3.0, min_history: int = 30, min_band: float = 0.0
    ) -> None:
        self.q_low = q_low
        self.q_high = q_high
        self.k = k
        self.min_history = min_history
        self.min_band = min_band

    def _check_params(self) -> None:
        require_number(self, "q_low", minimum=0, maximum=1)
        require_number(self, "q_high", minimum=0, maximum=1)
        if not self.q_low < self.q_high:
            raise ParamError("q_high", f"must be greater than q_low ({self.q_low}), got {self.q_high}")
        require_number(self, "k", minimum=0, exclusive_minimum=True)
        require_number(self, "min_band", minimum=0)

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        with quiet_nan_warnings():
            q_lo, median, q_hi = nanquantile_rows(X, (self.q_low, 0.5, self.q_high))
            # A box of width 0 (mostly-constant series) falls back to a mean-absolute-deviation box.
            box = fallback_spread(X, median, q_hi - q_lo)
        width = np.nan_to_num(box, nan=0.0)
        self.expected_ = median
        self.lower_ = np.minimum(q_lo - self.k * width, median - self.min_band)
        self.upper_ = np.maximum(q_hi + self.k * width, median + self.min_band)

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = X.shape[1]
        return _tile(self.expected_, n), _tile(self.lower_, n), _tile(self.upper_, n)


@register
class EWMA(Detector):
    """Exponentially weighted mean and variance, updated point by point: follows slow drifts.

    Each point is compared with the averages of the points before it. A point outside the
    band moves the mean only by its value clipped to the band and the variance at a quarter
    of the rate, so that a spike neither drags the expectation along nor widens the band
    much, while a lasting shift in level or noise is still adopted within a few half-lives.
    """

    time_invariant = True

    name = "ewma"
    summary = "exponentially weighted mean ± sensitivity × exponentially weighted std"
    param_docs = {
        "halflife": "time for an observation's weight to halve (duration, e.g. '30m')",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
    }

    def __init__(
        self, *, halflife: str | float = "30m", sensitivity: float = 4.0, min_history: int = 30, min_band: float = 0.0
    ) -> None:
        self.halflife = halflife
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band

    def _check_params(self) -> None:
        require_duration(self, "halflife")
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_number(self, "min_band", minimum=0)

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
        self.alpha_ = alpha = float(1.0 - 0.5 ** (step / require_duration(self, "halflife")))
        with quiet_nan_warnings():
            mean0 = nanmedian_rows(X)
            var0 = np.nanvar(X, axis=1)
        # Warm the averages up through the history, causally, from its median and variance.
        *_, self.mean_, self.var_ = self._run(X, alpha, np.nan_to_num(mean0), np.nan_to_num(var0))

    def _run(
        self, X: np.ndarray, alpha: float, mean: np.ndarray, var: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Expected, lower and upper for every point of X, then the averages after its last point."""
        exp = np.empty_like(X)
        half = np.empty_like(X)
        for j in range(X.shape[1]):  # sequential in time, vectorised over series
            h = np.maximum(self.sensitivity * np.sqrt(var), self.min_band)
            exp[:, j], half[:, j] = mean, h
            x = X[:, j]
            ok = ~np.isnan(x)
            inside = ok & (np.abs(x - mean) <= h)
            # An empty band (constant history) must still let a lasting change in.
            xc = np.where(h > 0, np.clip(x, mean - h, mean + h), x)
            d = np.where(ok, xc - mean, 0.0)
            # Outside the band the variance learns four times slower: a spike barely widens the
            # band, while a lasting change in level or noise is adopted within a few half-lives.
            a = np.where(inside | (h == 0), alpha, alpha / 4)
            var = np.where(ok, (1 - a) * (var + a * d * d), var)
            mean = mean + alpha * d
        return exp, exp - half, exp + half, mean, var

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Scoring continues the recursion from the fitted state without changing it, so the
        # same points score the same however often they are scored between refits.
        exp, lower, upper, _, _ = self._run(X, self.alpha_, self.mean_, self.var_)
        return exp, lower, upper


@register
class Seasonal(Detector):
    """Same time in past periods: expected value is the median of the matching phase bin.

    The period (a day, a week) is divided into ``bins`` phase bins; each bin's expected
    value is the median of the history points that fall into it, and the band is the
    robust spread of the residuals (value - expected) over the whole history.
    """

    name = "seasonal"
    summary = "median of the same phase in past periods (daily or weekly) ± robust residual spread"
    param_docs = {
        "period": "season length (duration, e.g. '1d' or '1w')",
        "bins": "phase bins per period (288 = 5-minute bins over a day)",
        "min_periods": "whole periods of history a series needs before it is scored",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
    }

    def __init__(
        self,
        *,
        period: str | float = "1d",
        bins: int = 288,
        min_periods: int = 2,
        sensitivity: float = 4.0,
        min_history: int = 30,
        min_band: float = 0.0,
    ) -> None:
        self.period = period
        self.bins = bins
        self.min_periods = min_periods
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band

    def _check_params(self) -> None:
        require_duration(self, "period")
        require_int(self, "bins", minimum=1)
        require_int(self, "min_periods", minimum=1)
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_number(self, "min_band", minimum=0)

    def _phase(self, t: np.ndarray) -> np.ndarray:
        period = require_duration(self, "period")
        return (np.floor((t % period) / period * self.bins)).astype(np.intp) % self.bins

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        period = require_duration(self, "period")
        phase = self._phase(t)
        profile = np.full((X.shape[0], self.bins), np.nan)
        order = np.argsort(phase, kind="stable")
        bounds = np.searchsorted(phase[order], np.arange(self.bins + 1))
        with quiet_nan_warnings():
            for b in range(self.bins):  # loop over phase bins, vectorised over series
                cols = order[bounds[b] : bounds[b + 1]]
                if cols.size:
                    profile[:, b] = np.nanmedian(X[:, cols], axis=1)
            expected = profile[:, phase]
            resid = X - expected
            centre = nanmedian_rows(resid)
            mad = 1.4826 * nanmedian_rows(np.abs(resid - centre[:, None]))
            spread = fallback_spread(resid, centre, mad)
        self.profile_ = profile
        self.spread_ = np.nan_to_num(spread, nan=0.0)
        # Ready only with min_periods whole periods of data and most phase bins known.
        span_ok = (t[-1] - t[0] + (t[1] - t[0] if t.size > 1 else 0)) >= self.min_periods * period if t.size else False
        bins_known = np.mean(~np.isnan(profile), axis=1) >= 0.9
        self.ready_ = self.ready_ & bins_known & bool(span_ok)

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        expected = self.profile_[:, self._phase(t)]
        half = np.maximum(self.sensitivity * self.spread_, self.min_band)[:, None]
        return expected, expected - half, expected + half
