"""Causal replay of a detector over a long batch: what the live sidecar would have scored.

The live sidecar refits on the trailing ``history`` points every ``refit_every`` points and
scores the points after each refit with that fit. Replaying that over a long series is a
loop over refit boundaries; for detectors whose result does not depend on absolute time
(``time_invariant``) and that treat rows independently (not ``pools_series``) the loop is
folded into one call by stacking every boundary's window as a row of one batch, so a
20,000-point series costs a few vectorised passes.
"""

from __future__ import annotations

import copy

import numpy as np

from sidecar.detectors.base import Detector, Scores, check_batch

#: Rows × columns of one stacked batch; bounds replay memory to a few hundred MB.
_MAX_CELLS = 4_000_000


def _empty(shape: tuple[int, ...]) -> Scores:
    return Scores(*(np.full(shape, np.nan) for _ in range(4)))


def boundaries(n_time: int, refit_every: int, start: int) -> np.ndarray:
    """Refit points: start, start + refit_every, ... (each scores up to the next one)."""
    return np.arange(max(start, 1), n_time, refit_every, dtype=np.intp)


def replay(
    detector: Detector, X: np.ndarray, t: np.ndarray, *, history: int, refit_every: int = 1, start: int | None = None
) -> Scores:
    """Score every point of ``X`` (n_series, n_time) causally; points before ``start`` stay NaN.

    ``history``: points a fit sees (the trailing window); ``refit_every``: points scored per fit.
    ``start`` defaults to ``detector.min_history`` (earlier points could not be ready).
    """
    X, t = check_batch(X, t)
    if history < 1 or refit_every < 1:
        raise ValueError("history and refit_every must be >= 1")
    out = _empty(X.shape)
    start = detector.min_history if start is None else start
    bounds = boundaries(X.shape[1], refit_every, start)
    if bounds.size == 0:
        return out
    regular = t.size < 3 or np.allclose(np.diff(t), t[1] - t[0])
    if detector.time_invariant and not detector.pools_series and regular:
        _replay_stacked(detector, X, t, history, refit_every, bounds, out)
    else:
        _replay_loop(detector, X, t, history, refit_every, bounds, out)
    return out


def _replay_loop(
    detector: Detector, X: np.ndarray, t: np.ndarray, history: int, refit_every: int, bounds: np.ndarray, out: Scores
) -> None:
    det = copy.deepcopy(detector)
    for b in bounds:
        lo, hi = max(0, b - history), min(X.shape[1], b + refit_every)
        s = det.fit(X[:, lo:b], t[lo:b]).score(X[:, b:hi], t[b:hi])
        for name in ("score", "expected", "lower", "upper"):
            getattr(out, name)[:, b:hi] = getattr(s, name)


def _replay_stacked(
    detector: Detector, X: np.ndarray, t: np.ndarray, history: int, refit_every: int, bounds: np.ndarray, out: Scores
) -> None:
    n_series, n_time = X.shape
    step = float(t[1] - t[0]) if t.size > 1 else 1.0
    # Pad so that every window [b - history, b + refit_every) exists; padding is missing data.
    padded = np.full((n_series, history + n_time + refit_every), np.nan)
    padded[:, history : history + n_time] = X
    t_rel = step * np.arange(history + refit_every, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_CELLS // (history + refit_every))
    # One row per (series, boundary): window starts at padded index b (= original b - history).
    all_series = np.repeat(np.arange(n_series, dtype=np.intp), bounds.size)
    all_starts = np.tile(bounds, n_series)
    det = copy.deepcopy(detector)
    for c0 in range(0, all_series.size, rows_per_chunk):
        series = all_series[c0 : c0 + rows_per_chunk]
        starts = all_starts[c0 : c0 + rows_per_chunk]
        cols = starts[:, None] + np.arange(history + refit_every)[None, :]
        windows = padded[series[:, None], cols]
        s = det.fit(windows[:, :history], t_rel[:history]).score(windows[:, history:], t_rel[history:])
        # Scatter the (rows, refit_every) results back; columns past the series end are dropped.
        target = starts[:, None] + np.arange(refit_every)[None, :]
        keep = target < n_time
        rr = np.broadcast_to(series[:, None], target.shape)[keep]
        cc = target[keep]
        for name in ("score", "expected", "lower", "upper"):
            getattr(out, name)[rr, cc] = getattr(s, name)[keep]
