"""Prototype: adaptive default detector (work in progress)."""

from __future__ import annotations

import numpy as np

from sidecar.detectors.base import Detector, quiet_nan_warnings, require_duration, require_int, require_number
from sidecar.detectors.registry import register

_Z99 = 2.5758293035489004  # two-sided 1 % point of the normal


def row_quantiles(X: np.ndarray, qs: list[float]) -> np.ndarray:
    """Quantiles of every row ignoring NaN (linear interpolation); shape (len(qs), n_rows)."""
    s = np.sort(X, axis=1)  # NaN sort last
    n = np.sum(~np.isnan(X), axis=1)
    rows = np.arange(X.shape[0])
    out = np.full((len(qs), X.shape[0]), np.nan)
    ok = n > 0
    if X.shape[1] == 0:
        return out
    for i, q in enumerate(qs):
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        frac = pos - lo
        v = s[rows, lo] + frac * (s[rows, hi] - s[rows, lo])
        out[i] = np.where(ok, v, np.nan)
    return out


def rolling_mean(X: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean of the last ``w`` non-NaN-aware points (incl. current) and its count."""
    ok = ~np.isnan(X)
    c = np.concatenate([np.zeros((X.shape[0], 1)), np.cumsum(np.where(ok, X, 0.0), axis=1)], axis=1)
    k = np.concatenate([np.zeros((X.shape[0], 1)), np.cumsum(ok, axis=1)], axis=1)
    n = X.shape[1]
    idx = np.arange(1, n + 1)
    lo = np.maximum(idx - w, 0)
    s = c[:, idx] - c[:, lo]
    cnt = k[:, idx] - k[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / cnt, cnt


@register
class Adaptive(Detector):
    time_invariant = True
    name = "adaptive"
    family = "statistical"
    summary = "level or daily-seasonal expectation, tail-calibrated band that tightens on sustained shifts"
    param_docs = {}

    def __init__(
        self,
        *,
        sensitivity: float = 5.0,
        season: str | float | None = "1d",
        min_periods: int = 3,
        window: str | float = "1h",
        window_sensitivity: float | None = None,
        tighten: float = 0.25,
        innovation: bool = True,
        innovation_sensitivity: float | None = None,
        tail: float = 0.01,
        tail_points: int = 1,
        tail_mode: str = "order",
        tail_prob: float = 1e-4,
        seasonal_gain: float = 0.6,
        rel_floor: float = 1e-3,
        min_history: int = 100,
        min_band: float = 0.0,
    ) -> None:
        self.sensitivity = sensitivity
        self.season = season
        self.min_periods = min_periods
        self.window = window
        self.window_sensitivity = window_sensitivity
        self.tighten = tighten
        self.innovation = innovation
        self.innovation_sensitivity = innovation_sensitivity
        self.tail = tail
        self.tail_points = tail_points
        self.tail_mode = tail_mode
        self.tail_prob = tail_prob
        self.seasonal_gain = seasonal_gain
        self.rel_floor = rel_floor
        self.min_history = min_history
        self.min_band = min_band

    def _check_params(self) -> None:
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_duration(self, "season", optional=True)
        require_duration(self, "window")
        require_int(self, "min_periods", minimum=2)
        require_number(self, "tighten", minimum=0, maximum=1)
        require_number(self, "min_band", minimum=0)

    # -- helpers ----------------------------------------------------------------------
    def _scales(self, r: np.ndarray, floor: np.ndarray, dof: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Center and upper/lower band half-widths of residual rows (sensitivity already applied)."""
        if self.tail_mode == "evt":
            return self._evt(r, floor)
        from scipy.special import ndtri

        srt = np.sort(r, axis=1)
        n = np.sum(~np.isnan(r), axis=1)
        rows = np.arange(r.shape[0])
        nn = np.maximum(n, 1)
        med = 0.5 * (srt[rows, (nn - 1) // 2] + srt[rows, nn // 2])
        ad = np.sort(np.abs(r - med[:, None]), axis=1)
        mad = 1.4826 * 0.5 * (ad[rows, (nn - 1) // 2] + ad[rows, nn // 2])
        with quiet_nan_warnings():
            mean_ad = 1.2533 * np.nanmean(np.abs(r - med[:, None]), axis=1)
        base = np.where(mad > 0, mad, mean_ad)
        k = np.minimum(self.tail_points, nn)
        z = ndtri(1 - k / (np.maximum(nn / dof, 2 * k) + 1.0))
        hi = srt[rows, nn - k]
        lo = srt[rows, k - 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            up = np.fmax(base, (hi - med) / z)
            lo = np.fmax(base, (med - lo) / z)
        up = np.nan_to_num(np.fmax(up, floor))
        lo = np.nan_to_num(np.fmax(lo, floor))
        med = np.where(n > 0, med, np.nan)
        return med, self.sensitivity * up, self.sensitivity * lo

    def _evt(self, r: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exponential-tail extrapolation: the value exceeded with probability p per point.

        Above the (1 - a) quantile u the tail is modelled as exponential with the mean excess
        beta; the edge is u + beta * ln(a / p), for each side separately.
        """
        a, p = self.tail, self.tail_prob
        srt = np.sort(r, axis=1)
        n = np.sum(~np.isnan(r), axis=1)
        rows = np.arange(r.shape[0])
        nn = np.maximum(n, 1)
        med = 0.5 * (srt[rows, (nn - 1) // 2] + srt[rows, nn // 2])
        m = np.maximum(np.ceil(a * nn).astype(np.intp), 1)  # points in each tail
        cols = np.arange(r.shape[1])[None, :]
        # upper tail: the m largest; u = the (m+1)-th largest
        u_hi = srt[rows, np.maximum(nn - m - 1, 0)]
        top = (cols >= (nn - m)[:, None]) & (cols < nn[:, None])
        ex_hi = np.where(top, srt - u_hi[:, None], 0.0).sum(axis=1) / m
        u_lo = srt[rows, np.minimum(m, nn - 1)]
        bot = cols < m[:, None]
        ex_lo = np.where(bot, u_lo[:, None] - srt, 0.0).sum(axis=1) / m
        f = np.log(a / p)
        with np.errstate(invalid="ignore"):
            up = u_hi + ex_hi * f - med
            lo = med - (u_lo - ex_lo * f)
        up = np.nan_to_num(np.fmax(up, floor))
        lo = np.nan_to_num(np.fmax(lo, floor))
        med = np.where(n > 0, med, np.nan)
        return med, up, lo

    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        n_series, n_time = X.shape
        step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
        self.step_ = step
        w = max(1, int(round(require_duration(self, "window") / step)))
        self.w_ = w
        with quiet_nan_warnings():
            level = row_quantiles(X, [0.5])[0]
        floor = np.maximum(self.rel_floor * np.abs(np.nan_to_num(level)), self.min_band)
        self.floor_ = floor
        # Seasonal profile aligned to the end of the history.
        P = 0
        season = require_duration(self, "season", optional=True)
        if season is not None:
            P = int(round(season / step))
        K = n_time // P if P >= 2 else 0
        seasonal = np.zeros(n_series, dtype=bool)
        expected_hist = np.broadcast_to(level[:, None], X.shape)
        if K >= self.min_periods:
            Xs = X[:, n_time - K * P :].reshape(n_series, K, P)
            with quiet_nan_warnings():
                profile = np.nanmedian(Xs, axis=1)
            rs = (Xs - profile[:, None, :]).reshape(n_series, K * P)
            rl = X[:, n_time - K * P :] - level[:, None]
            with quiet_nan_warnings():
                sc_s = np.nanmean(np.abs(rs - np.nanmedian(rs, axis=1)[:, None]), axis=1)
                sc_l = np.nanmean(np.abs(rl - np.nanmedian(rl, axis=1)[:, None]), axis=1)
            seasonal = (sc_s < self.seasonal_gain * sc_l) & np.all(~np.isnan(profile), axis=1)
            self.profile_ = profile
            self.phase0_ = (n_time - K * P) % P  # phase of the first scored point = n_time % P relative
            seas_hist = np.concatenate([np.full((n_series, n_time - K * P), np.nan), np.tile(profile, (1, K))], axis=1)
            expected_hist = np.where(seasonal[:, None], seas_hist, level[:, None])
        self.P_ = P
        self.seasonal_ = seasonal
        self.level_ = level
        r = X - expected_hist
        med, up, lo = self._scales(r, floor)
        self.center_ = med
        self.h_up_ = up
        self.h_lo_ = lo
        # Change model: trailing w-means of the residuals.
        if w > 1:
            m, cnt = rolling_mean(r, w)
            m = np.where(cnt >= 0.75 * w, m, np.nan)
            m_med, m_up, m_lo = self._scales(m, floor / np.sqrt(w), dof=w)
            ws = self.window_sensitivity if self.window_sensitivity is not None else self.sensitivity
            self.m_center_ = m_med
            self.m_up_ = m_up
            self.m_lo_ = m_lo
            if self.innovation:
                # residual of each point against the mean of the w points before it
                prev, pcnt = rolling_mean(np.concatenate([np.full((n_series, 1), np.nan), r[:, :-1]], axis=1), w)
                inn = np.where(pcnt >= 0.5 * w, r - prev, np.nan)
                i_med, i_up, i_lo = self._scales(inn, floor)
                isens = self.innovation_sensitivity if self.innovation_sensitivity is not None else self.sensitivity
                self.i_center_ = i_med
                self.i_up_ = i_up
                self.i_lo_ = i_lo
            self.tail_ = r[:, max(0, n_time - w) :]
            if self.tail_.shape[1] < w:
                self.tail_ = np.concatenate([np.full((n_series, w - self.tail_.shape[1]), np.nan), self.tail_], axis=1)

    def _expected(self, X: np.ndarray, n_hist_cols: int | None = None) -> np.ndarray:
        n_series, n = X.shape
        exp = np.broadcast_to(self.level_[:, None], X.shape)
        if self.seasonal_.any():
            P = self.P_
            # First scored point continues the history: its phase index is K*P % P == 0 from profile start.
            idx = np.arange(n) % P
            exp = np.where(self.seasonal_[:, None], self.profile_[:, idx], exp)
        return exp

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = self._expected(X) + self.center_[:, None]
        up = e + self.h_up_[:, None]
        lo = e - self.h_lo_[:, None]
        w = self.w_
        if w > 1:
            r = X - e + self.center_[:, None]  # residual as in fit (before centering)
            seq = np.concatenate([self.tail_, r], axis=1)
            ok = ~np.isnan(seq)
            c = np.concatenate([np.zeros((X.shape[0], 1)), np.cumsum(np.where(ok, seq, 0.0), axis=1)], axis=1)
            k = np.concatenate([np.zeros((X.shape[0], 1)), np.cumsum(ok, axis=1)], axis=1)
            j = np.arange(X.shape[1]) + w  # index of the current point in seq
            prev_sum = c[:, j] - c[:, j - (w - 1)]
            prev_cnt = k[:, j] - k[:, j - (w - 1)]
            n = prev_cnt + 1
            # x such that the w-mean of residuals hits its band edge
            e0 = e - self.center_[:, None]
            full = n >= 0.75 * w
            up_c = np.where(full, e0 + n * (self.m_center_[:, None] + self.m_up_[:, None]) - prev_sum, np.inf)
            lo_c = np.where(full, e0 + n * (self.m_center_[:, None] - self.m_lo_[:, None]) - prev_sum, -np.inf)
            if self.innovation:
                with np.errstate(invalid="ignore", divide="ignore"):
                    pw = k[:, j] - k[:, j - w]
                    pm = np.where(pw >= 0.5 * w, (c[:, j] - c[:, j - w]) / pw, np.nan)
                # with w-1 previous points (close enough to w used in fit)
                up_i = e0 + pm + self.i_center_[:, None] + self.i_up_[:, None]
                lo_i = e0 + pm + self.i_center_[:, None] - self.i_lo_[:, None]
                up_c = np.fmin(up_c, up_i)
                lo_c = np.fmax(lo_c, lo_i)
            rho = self.tighten
            up = np.maximum(e + rho * self.h_up_[:, None], np.minimum(up, up_c))
            lo = np.minimum(e - rho * self.h_lo_[:, None], np.maximum(lo, lo_c))
        return e, lo, up
