"""The recommended default detector: a robust, tail-calibrated band that tightens on sustained change.

Every point is checked against statistics of the trailing history, in three ways:

1. **Level**: how far is the value from what is expected now? The expectation is the history
   median or, for series whose history a daily profile explains much better (and covers at
   least ``min_periods`` days, so weekends are in it), the median of the same time of day over
   the past days. The band half-width is ``sensitivity`` Gaussian-equivalent standard deviations
   of the history's residuals: the larger of the MAD estimate (mean absolute deviation where the
   MAD is 0) and the one implied by the extremes seen, an extreme of n Gaussian draws being
   about Φ⁻¹(1 - 1/n) sigmas. Heavy tails, spiky and step-like series so widen the band instead
   of collapsing it; constant series keep a tiny relative band (``min_rel_band``).
2. **Sustained shift** (short window vs long history): is the mean residual of the last
   ``window`` outside the usual range of such means? Catches level shifts and denser bursts
   too small to leave the level band point by point.
3. **Jump**: is the value far from the mean of the ``window`` before it, compared with the jumps
   seen in the history? Catches sudden moves of autocorrelated series whose level band is wide.

(2) and (3) only narrow the level band, never below ``tighten`` of it, so a paging value is always
clearly off the expectation. The band stays [lower, upper] around the expectation and the score
is the shared band score (1 at the edge).

Extremes are learned per block of two windows: an extreme counts once it was reached in two
separate blocks (one past incident does not blind the detector to the next one) and the newest
block is not learned yet (an ongoing incident does not widen its own band, whatever the refit
cadence: a lasting change pages for at least two windows, then the band adapts).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from sidecar.detectors.base import (
    Detector,
    nanmedian_rows,
    quiet_nan_warnings,
    require_duration,
    require_int,
    require_number,
)
from sidecar.detectors.registry import register

#: A daily profile is used only when its residuals are this much smaller than the level model's.
_SEASONAL_GAIN = 0.6
#: Extremes are taken per block of this many windows; the newest block is not learned yet.
_UNLEARNED_WINDOWS = 2
#: An extreme counts as normal once this many separate blocks of the history reached it.
_EPISODES = 2
#: Blocks of history (the learned episodes and the unlearned newest one) a series needs before
#: the shift and jump checks may tighten its band.
_SHIFT_BLOCKS = _EPISODES + 1
#: Share of a window that must be present (not NaN) for its mean to count.
_WINDOW_COVERAGE = 0.75


def trailing_sum(X: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the non-NaN values among the last ``w`` points of every position (inclusive).

    Without NaN the count is min(position + 1, w), returned as a read-only broadcast view.
    """
    nan = np.isnan(X)
    c = np.cumsum(np.where(nan, 0.0, X) if nan.any() else X, axis=1)
    s = np.empty_like(c)
    head = min(w, X.shape[1])
    s[:, :head] = c[:, :head]
    np.subtract(c[:, w:], c[:, :-w], out=s[:, w:])
    if not nan.any():
        n = np.minimum(np.arange(1, X.shape[1] + 1, dtype=np.float64), float(w))
        return s, np.broadcast_to(n, X.shape)
    k = np.cumsum(~nan, axis=1, dtype=np.float64)
    n = np.empty_like(k)
    n[:, :head] = k[:, :head]
    np.subtract(k[:, w:], k[:, :-w], out=n[:, w:])
    return s, n


def season_medians(Xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (series, phase) median over the seasons (axis 1), and each value's leave-one-out median.

    ``Xs`` is (series, seasons, phase); NaN is ignored. In-sample residuals against a median of a
    few seasons are too small (with 3 seasons a third are exactly 0); leaving the point out gives
    the error a new season will see. One sort serves both.
    """
    S = np.sort(Xs, axis=1)  # NaN last
    top = Xs.shape[1] - 1
    count = np.sum(~np.isnan(Xs), axis=1, keepdims=True)
    uniform = bool((count == count.flat[0]).all()) if count.size else False

    def at(p: np.ndarray) -> np.ndarray:
        if uniform:  # the same order statistic everywhere: a slice, no gather
            k = int(np.clip(p.flat[0], 0, top))
            return S[:, k : k + 1, :]
        return np.take_along_axis(S, np.clip(p, 0, top), axis=1)

    median = 0.5 * (at((count - 1) // 2) + at(count // 2))[:, 0, :]
    median[count[:, 0, :] == 0] = np.nan
    m = count - 1  # the others
    # Removing a value <= the p-th order statistic shifts the p-th of the rest up by one;
    # the leave-one-out median is the mean of the p-th and q-th of the rest (p == q for odd m).
    p, q = (m - 1) // 2, m // 2
    loo = np.where(Xs <= at(p), at(p + 1), at(p))
    if not (uniform and m.size and m.flat[0] % 2 == 1):
        loo += np.where(Xs <= at(q), at(q + 1), at(q))
        loo *= 0.5
    return median, np.where(m >= 1, loo, np.nan)


@register
class Adaptive(Detector):
    """Level or daily-seasonal expectation; band from robust and extreme residuals; tightens on shifts and jumps."""

    time_invariant = True
    # Its fit sorts the whole history several times; a level learned 10 minutes ago is as good,
    # and the shift and jump checks run on every new point between refits.
    recommended_refit_interval = 600.0

    name = "adaptive"
    summary = "median or daily profile ± tail-calibrated band that tightens on sustained shifts and jumps"
    param_docs = {
        "sensitivity": "band half-width in Gaussian-equivalent standard deviations of the history's residuals",
        "season": "season length tried as expectation (duration, e.g. '1d'); none: level only",
        "min_periods": "seasons of history (at least 90 % of their points) needed before the seasonal expectation is tried",
        "window": "short window of the shift and jump checks (duration, e.g. '1h')",
        "tighten": "narrowest band the shift and jump checks may leave, as a fraction of the level band (0-1)",
        "min_rel_band": "smallest band half-width relative to |expected| (keeps constant series finite)",
        "min_history": "points of history a series needs before it is scored",
        "min_band": "smallest band half-width, in the metric's unit (keeps near-constant series quiet)",
    }

    def __init__(
        self,
        *,
        sensitivity: float = 5.5,
        season: str | float | None = "1d",
        min_periods: int = 7,
        window: str | float = "1h",
        tighten: float = 0.25,
        min_rel_band: float = 1e-3,
        min_history: int = 100,
        min_band: float = 0.0,
    ) -> None:
        self.sensitivity = sensitivity
        self.season = season
        self.min_periods = min_periods
        self.window = window
        self.tighten = tighten
        self.min_rel_band = min_rel_band
        self.min_history = min_history
        self.min_band = min_band

    def _check_params(self) -> None:
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_duration(self, "season", optional=True)
        require_int(self, "min_periods", minimum=2)
        require_duration(self, "window")
        require_number(self, "tighten", minimum=0, maximum=1)
        require_number(self, "min_rel_band", minimum=0)
        require_number(self, "min_band", minimum=0)

    # -- fit -----------------------------------------------------------------------------
    def _spread(self, r: np.ndarray, floor: np.ndarray, dof: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Center and upper/lower band half-widths (``sensitivity`` sigmas, at least ``floor``) of rows ``r``.

        sigma per side = max(MAD sigma, k-th block extreme / Φ⁻¹(1 - k/n_eff)), k = _EPISODES and
        n_eff = n / dof (``dof`` > 1 for overlapping window means, whose extremes come from fewer
        independent draws). A MAD of 0 (mostly-constant series) falls back to the mean absolute deviation.
        """
        center = nanmedian_rows(r)
        dev = r - center[:, None]
        absdev = np.abs(dev)
        mad = 1.4826 * nanmedian_rows(absdev)
        base = mad
        flat = ~(mad > 0)
        if flat.any():
            with quiet_nan_warnings():
                base = np.where(flat, 0.0, mad)
                base[flat] = 1.2533 * np.nanmean(absdev[flat], axis=1)
        # Block extremes, leaving out the newest block (an ongoing incident must not widen its
        # own band); the _EPISODES-th largest is the extreme that recurred.
        b = _UNLEARNED_WINDOWS * self.w_
        n_old_cols = r.shape[1] - b
        n_blocks = -(-n_old_cols // b)  # blocks aligned to the end; the oldest may be partial
        if n_blocks >= 1:
            first = n_old_cols - (n_blocks - 1) * b  # length of the oldest block
            full = dev[:, first:n_old_cols].reshape(r.shape[0], n_blocks - 1, b)
            with quiet_nan_warnings():
                top = np.concatenate([np.fmax.reduce(dev[:, :first], axis=1)[:, None], np.fmax.reduce(full, axis=2)], axis=1)
                bottom = np.concatenate([np.fmin.reduce(dev[:, :first], axis=1)[:, None], np.fmin.reduce(full, axis=2)], axis=1)
            top.sort(axis=1)  # NaN sorts last
            bottom.sort(axis=1)
            known = np.sum(~np.isnan(top), axis=1)
            k = np.clip(known, 1, _EPISODES)
            rows = np.arange(r.shape[0])
            n_old = n_old_cols - np.count_nonzero(np.isnan(dev[:, :n_old_cols]), axis=1)
            z = ndtri(1.0 - k / (np.maximum(n_old / dof, 2.0 * k) + 1.0))
            up = np.fmax(base, top[rows, np.maximum(known - k, 0)] / z)
            lo = np.fmax(base, -bottom[rows, k - 1] / z)
        else:
            up = lo = base
        half_up = self.sensitivity * np.nan_to_num(np.fmax(up, 0.0))
        half_lo = self.sensitivity * np.nan_to_num(np.fmax(lo, 0.0))
        return center, np.maximum(half_up, floor), np.maximum(half_lo, floor)

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        n_series, n_time = X.shape
        self.step_ = step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
        self.w_ = w = max(1, int(round(require_duration(self, "window") / step)))
        self.level_ = level = nanmedian_rows(X)
        floor = np.maximum(self.min_rel_band * np.abs(np.nan_to_num(level)), self.min_band)

        # Expectation over the history: the level, or a daily profile where it fits much better.
        season = require_duration(self, "season", optional=True)
        self.period_ = period = int(round(season / step)) if season is not None else 0
        n_seasons = -(-n_time // period) if period >= 2 else 0  # the oldest may be partial
        self.seasonal_ = np.zeros(n_series, dtype=bool)
        if n_seasons >= self.min_periods:
            span = n_seasons * period  # seasons end at the last point, so phase 0 starts each
            Xs = np.concatenate([np.full((n_series, span - n_time), np.nan), X], axis=1)
            Xs = Xs.reshape(n_series, n_seasons, period)
            self.profile_, loo = season_medians(Xs)
            loo = loo.reshape(n_series, span)[:, span - n_time :]  # leave-one-out: the error a new season sees
            r_season = X - loo
            r_level = X - level[:, None]
            with quiet_nan_warnings():
                fit_season = np.nanmean(np.abs(r_season), axis=1)
                fit_level = np.nanmean(np.abs(r_level), axis=1)
            seen = np.mean(np.sum(~np.isnan(Xs), axis=1) >= self.min_periods, axis=1)
            self.seasonal_ = (fit_season < _SEASONAL_GAIN * fit_level) & (seen >= 0.9)
            self.seasonal_ &= ~np.isnan(self.profile_).any(axis=1)
            r = np.where(self.seasonal_[:, None], r_season, r_level) if self.seasonal_.any() else r_level
        else:
            r = X - level[:, None]
        self.center_, self.half_up_, self.half_lo_ = self._spread(r, floor)
        if w == 1:
            return

        # Sustained shift: means of the last w residuals.
        s, cnt = trailing_sum(r, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(cnt >= _WINDOW_COVERAGE * w, s / cnt, np.nan)
        self.shift_center_, self.shift_up_, self.shift_lo_ = self._spread(means, floor / np.sqrt(w), dof=w)
        # Jump: residual minus the mean of the w residuals before it (s[:, j-1] covers points
        # j-w..j-1: exactly the w points before j; the first point has none).
        jumps = np.full(r.shape, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            jumps[:, 1:] = np.where(cnt[:, :-1] >= 0.5 * w, r[:, 1:] - s[:, :-1] / cnt[:, :-1], np.nan)
        self.jump_center_, self.jump_up_, self.jump_lo_ = self._spread(jumps, floor)
        # The spread of window means and jumps needs several independent windows: with a
        # younger history (a new pod) they would tighten the band on noise, so such series
        # keep the level band alone (an infinite edge leaves it as it is).
        young = self.n_history_ < _SHIFT_BLOCKS * _UNLEARNED_WINDOWS * w
        for edge in (self.shift_up_, self.shift_lo_, self.jump_up_, self.jump_lo_):
            edge[young] = np.inf
        # The last w residuals, to continue both checks into the scored points.
        tail = r[:, max(0, n_time - w) :]
        self.tail_ = np.concatenate([np.full((n_series, w - tail.shape[1]), np.nan), tail], axis=1)

    # -- score ---------------------------------------------------------------------------
    def _expected(self, t: np.ndarray) -> np.ndarray:
        exp = np.broadcast_to(self.level_[:, None], (self.level_.shape[0], t.size))
        if self.seasonal_.any():
            # The fitted profile ends with the history: the j-th step after it has phase j mod period.
            steps = np.rint((t - self.fit_end_) / self.step_).astype(np.int64) - 1
            exp = np.where(self.seasonal_[:, None], self.profile_[:, steps % self.period_], exp)
        return exp

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = self._expected(t)
        expected = base + self.center_[:, None]
        upper = expected + self.half_up_[:, None]
        lower = expected - self.half_lo_[:, None]
        w = self.w_
        if w == 1:
            return expected, lower, upper
        # Residual sums over the points before each scored point (history tail, then the batch).
        seq = np.concatenate([self.tail_, X - base], axis=1)
        s, cnt = trailing_sum(seq, w)
        j = np.arange(X.shape[1]) + w - 1  # column of the point before each scored point
        prev1_s = s[:, j] - np.nan_to_num(seq[:, j - w + 1])  # the w-1 points before
        prev1_n = cnt[:, j] - ~np.isnan(seq[:, j - w + 1])
        n = prev1_n + 1
        with np.errstate(invalid="ignore", divide="ignore"):
            # Shift: the value x that puts the mean of the last w residuals on its band edge.
            ok = n >= _WINDOW_COVERAGE * w
            up_edge = np.where(ok, base + n * (self.shift_center_ + self.shift_up_)[:, None] - prev1_s, np.inf)
            lo_edge = np.where(ok, base + n * (self.shift_center_ - self.shift_lo_)[:, None] - prev1_s, -np.inf)
            # Jump: band around the mean of the w residuals before.
            prev_mean = np.where(cnt[:, j] >= 0.5 * w, s[:, j] / cnt[:, j], np.nan)
        up_edge = np.fmin(up_edge, base + prev_mean + (self.jump_center_ + self.jump_up_)[:, None])
        lo_edge = np.fmax(lo_edge, base + prev_mean + (self.jump_center_ - self.jump_lo_)[:, None])
        # Narrow the level band, but never below `tighten` of it around the expectation.
        # (fmin/fmax: a check with no usable history, NaN, leaves the band as it is.)
        upper = np.maximum(expected + self.tighten * self.half_up_[:, None], np.fmin(upper, up_edge))
        lower = np.minimum(expected - self.tighten * self.half_lo_[:, None], np.fmax(lower, lo_edge))
        return expected, lower, upper
