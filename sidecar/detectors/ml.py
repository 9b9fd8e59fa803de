"""Machine-learning detectors: one model learned from the windows of every series of a batch.

A query returns up to 10,000 series, so one model per series is out. Instead each series is
normalised with its own history (median and MAD, with a non-zero floor), the last ``window``
normalised points before each point become that point's context, windows of all series are
pooled (subsampled to ``max_train_windows``, seeded) and ONE model learns to predict the
current point from its context. The prediction, de-normalised with the series' own median
and scale, is the expected value; the band is expected ± ``sensitivity`` × the robust spread
(MAD, mean absolute deviation where MAD is 0) of the series' own residuals over its history.
So the model learns shapes shared by the fleet (daily ramps, AR-like persistence, periodic
patterns) while every series keeps its own level, scale and noise.

Details shared by all window detectors:

- Normalised values are clipped to ±``CLIP`` robust sigmas before they reach a model: a past
  spike neither dominates training nor drives a prediction far outside what was learned.
- Training uses only complete windows (no NaN in context or target). Scoring forward-fills
  gaps in a context if at most ``MAX_MISSING`` of it is missing; otherwise the point falls
  back to the series median as its expectation. Residuals for the band are computed with
  exactly that rule, on up to ``RESIDUAL_WINDOWS`` evenly spaced points per series.
- A series whose history is constant expects that constant (its normalised windows carry
  nothing), so an unchanged value scores 0 and any change scores far above 1.
- Scoring needs the ``window`` points before the first scored point: ``fit`` keeps the last
  ``window`` history points of every series (``context_``).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sidecar.detectors.base import (
    Detector,
    ParamError,
    fallback_spread,
    nanmedian_rows,
    quiet_nan_warnings,
    require_int,
    require_number,
)
from sidecar.detectors.registry import register

#: Normalised values (robust sigmas from the series median) are clipped to ± this.
CLIP = 10.0
#: Share of a context that may be missing (forward-filled) at score time.
MAX_MISSING = 0.25
#: Evenly spaced history points per series whose residuals give the band's spread.
RESIDUAL_WINDOWS = 128
#: Fewer complete training windows than this: train on forward-filled ones too.
MIN_TRAIN_WINDOWS = 20
#: Cells (rows × window) of one prediction chunk; bounds memory on 10,000-series batches.
_CHUNK_CELLS = 2_000_000
#: Smallest normalisation scale, relative to max(1, |median|).
_SCALE_FLOOR = 1e-9

_SENS_DOC = "band half-width in units of the robust spread of the series' residuals; score 1 at the band edge"
_WINDOW_DOC = "points of context before the scored point that the model sees"
_MIN_HISTORY_DOC = "points of history a series needs before it is scored (more than window)"
_MIN_BAND_DOC = "smallest band half-width, in the metric's unit (keeps near-constant series quiet)"
_MAX_TRAIN_DOC = "cap on the windows pooled from all series to train the model (seeded subsample)"
_SEED_DOC = "seed of the subsample and of the model; a fixed value makes fits reproducible"


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run model code with one BLAS and one OpenMP thread.

    The sidecar already runs a thread per query and often sits under a CPU quota; the native
    thread pools of scikit-learn (OpenMP in k-means, BLAS in the MLP and Nystroem) then spin
    against each other: measured 10-40x slower on a busy 2-core machine. The BLAS limit is
    process-wide, so concurrent callers share it (the last one out restores it); the OpenMP
    limit is per thread.
    """
    from threadpoolctl import threadpool_limits

    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = threadpool_limits(1, user_api="blas")
        _blas_users += 1
    try:
        with threadpool_limits(1, user_api="openmp"):
            yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def require_seed(det: Detector, param: str) -> None:
    value = getattr(det, param)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ParamError(param, f"must be a non-negative whole number or none, got {value!r}")


def robust_normaliser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row median, scale (1.4826·MAD, mean absolute deviation where MAD is 0, floored) and
    a mask of rows whose history is constant (scale 0 before the floor)."""
    with quiet_nan_warnings():
        center = nanmedian_rows(X)
        mad = 1.4826 * nanmedian_rows(np.abs(X - center[:, None]))
        spread = fallback_spread(X, center, mad)
    constant = ~(spread > 0)
    floor = _SCALE_FLOOR * np.maximum(1.0, np.abs(np.nan_to_num(center)))
    scale = np.maximum(np.nan_to_num(spread, nan=0.0), floor)
    return center, scale, constant


def forward_fill(Z: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Replace NaN by the last earlier value of the row (``fill`` before the first one); causal."""
    nan = np.isnan(Z)
    if not nan.any():
        return Z
    idx = np.where(nan, 0, np.arange(Z.shape[1])[None, :])
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = np.take_along_axis(Z, idx, axis=1)
    return np.where(np.isnan(out), fill, out)


def missing_counts(Z: np.ndarray, w: int) -> np.ndarray:
    """NaN count of every length-``w`` window of each row: shape (n_rows, n_cols - w + 1)."""
    c = np.zeros((Z.shape[0], Z.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.isnan(Z), axis=1, out=c[:, 1:])
    return c[:, w:] - c[:, :-w]


class WindowDetector(Detector):
    """Shared machinery: robust normalisation, pooled windows, residual band, stored context.

    Subclasses implement ``_fit_model`` (training windows of length window + 1, the last
    column being the point to predict) and ``_predict`` (contexts of length window → the
    normalised expectation of the next point), and check their own knobs in ``_check_model``.
    """

    time_invariant = True
    pools_series = True
    family = "machine_learning"
    recommended_refit_interval = 3600.0  # training a model every cycle would dominate the sidecar's CPU

    window: int
    sensitivity: float
    min_band: float
    max_train_windows: int
    random_state: int | None

    # -- parameters ----------------------------------------------------------------------
    def _check_params(self) -> None:
        require_int(self, "window", minimum=1)
        require_number(self, "sensitivity", minimum=0, exclusive_minimum=True)
        require_number(self, "min_band", minimum=0)
        require_int(self, "max_train_windows", minimum=MIN_TRAIN_WINDOWS)
        require_seed(self, "random_state")
        if self.min_history <= self.window:
            raise ParamError("min_history", f"must be greater than window ({self.window}), got {self.min_history}")
        self._check_model()

    def _check_model(self) -> None:
        """Subclass hook: validate the model's knobs."""

    # -- model hooks -----------------------------------------------------------------------
    def _fit_model(self, W: np.ndarray) -> Any:
        raise NotImplementedError

    def _predict(self, C: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- fit -----------------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, t: np.ndarray) -> None:
        w = self.window
        self.center_, self.scale_, self.constant_ = robust_normaliser(X)
        Z = self._normalise(X)
        # Context for the first scored points: the last `window` raw history points.
        ctx = np.full((X.shape[0], w), np.nan)
        keep = min(w, X.shape[1])
        if keep:
            ctx[:, w - keep :] = X[:, X.shape[1] - keep :]
        self.context_ = ctx

        W = self._training_windows(Z)
        with warnings.catch_warnings(), single_threaded():
            warnings.simplefilter("ignore")  # convergence chatter of small or degenerate batches
            self.model_ = None if W is None else self._fit_model(W)
        self.n_train_windows_ = 0 if W is None else W.shape[0]

        # Residual spread over evenly spaced history points, scored like live points.
        n_time = X.shape[1]
        spread = np.full(X.shape[0], np.nan)
        if n_time > w:
            pos = np.unique(np.linspace(w, n_time - 1, min(RESIDUAL_WINDOWS, n_time - w)).round().astype(np.intp))
            rows = np.flatnonzero(self.ready_)
            expected = self._expected(Z[rows], pos, rows)
            resid = X[rows][:, pos] - expected
            with quiet_nan_warnings():
                mid = nanmedian_rows(resid)
                mad = 1.4826 * nanmedian_rows(np.abs(resid - mid[:, None]))
                spread[rows] = fallback_spread(resid, mid, mad)
        # No usable residual (gappy series): the series' own robust spread, as robust_zscore.
        spread = np.where(np.isnan(spread), np.where(self.constant_, 0.0, self.scale_), spread)
        self.spread_ = np.nan_to_num(spread, nan=0.0)

    def _normalise(self, X: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.clip((X - self.center_[:, None]) / self.scale_[:, None], -CLIP, CLIP)

    def _training_windows(self, Z: np.ndarray) -> np.ndarray | None:
        """Pooled, seeded subsample of windows (context + target) of the ready series."""
        w = self.window
        Z = Z[self.ready_ & ~self.constant_]  # constant series teach nothing but "predict 0"
        if Z.shape[1] <= w or Z.shape[0] == 0:
            return None
        miss = missing_counts(Z, w + 1)  # (n, n_time - w)
        candidates = np.flatnonzero(miss == 0)
        source = Z
        if candidates.size < MIN_TRAIN_WINDOWS:
            # Gappy fleet (e.g. a scrape lost every few points): forward-filled contexts,
            # observed targets, as scoring would see them.
            ok = (miss <= int(MAX_MISSING * w)) & ~np.isnan(Z[:, w:])
            candidates = np.flatnonzero(ok)
            source = forward_fill(Z)
            if candidates.size < MIN_TRAIN_WINDOWS:
                return None
        rng = np.random.default_rng(self.random_state)
        if candidates.size > self.max_train_windows:
            candidates = np.sort(rng.choice(candidates, self.max_train_windows, replace=False))
        s, p = np.divmod(candidates, miss.shape[1])
        return sliding_window_view(source, w + 1, axis=1)[s, p]

    # -- score ---------------------------------------------------------------------------------
    def _expected(self, Z: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Expected raw value at columns ``pos`` (each >= window) of normalised rows ``Z``.

        ``rows`` are the series indices of Z's rows (for de-normalisation). The context of
        column p is Z[:, p - window : p], forward-filled; too gappy a context, or no model,
        gives the series median.
        """
        w = self.window
        out = np.zeros((Z.shape[0], pos.size))
        if self.model_ is not None and Z.shape[0] and pos.size:
            ok_all = missing_counts(Z, w)[:, pos - w] <= int(MAX_MISSING * w)
            F = forward_fill(Z)
            chunk = max(1, _CHUNK_CELLS // (pos.size * w))
            with single_threaded():
                for r0 in range(0, Z.shape[0], chunk):  # chunks of series bound memory, not a per-series loop
                    r1 = min(r0 + chunk, Z.shape[0])
                    ok = ok_all[r0:r1]
                    if not ok.any():
                        continue
                    C = sliding_window_view(F[r0:r1], w, axis=1)[:, pos - w]  # (rows, pos, w) copy
                    out[r0:r1][ok] = self._predict(np.ascontiguousarray(C[ok], dtype=np.float64))
        expected = self.center_[rows, None] + self.scale_[rows, None] * out
        # A constant history expects its constant exactly.
        return np.where(self.constant_[rows, None], self.center_[rows, None], expected)

    def _band(self, X: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = self.window
        n = X.shape[1]
        full = self._normalise(np.concatenate([self.context_, X], axis=1))
        rows = np.flatnonzero(self.ready_)
        expected = np.broadcast_to(self.center_[:, None], X.shape).copy()
        expected[rows] = self._expected(full[rows], w + np.arange(n), rows)
        half = np.maximum(self.sensitivity * self.spread_, self.min_band)[:, None]
        return expected, expected - half, expected + half


# -- detectors ---------------------------------------------------------------------------------
@register
class Forest(WindowDetector):
    """Extremely randomised trees predict the next normalised value from the previous window.

    Trees capture non-linear shapes (a ramp that always levels off, a step that always comes
    back) and never extrapolate beyond the values they were trained on, so a spike in the
    context cannot drag the expectation away.
    """

    name = "forest"
    summary = "extra-trees regressor pooled over all series: next value from the previous window ± residual spread"
    param_docs = {
        "window": _WINDOW_DOC,
        "n_estimators": "trees in the forest",
        "min_samples_leaf": "windows per leaf; larger is smoother and keeps in-sample residuals honest",
        "max_features": "share of the window's points tried at each split (0-1]",
        "n_jobs": "threads used to fit and predict (none: 1)",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
        "max_train_windows": _MAX_TRAIN_DOC,
        "random_state": _SEED_DOC,
    }

    def __init__(
        self,
        *,
        window: int = 30,
        n_estimators: int = 30,
        min_samples_leaf: int = 10,
        max_features: float = 0.5,
        n_jobs: int | None = None,
        sensitivity: float = 4.0,
        min_history: int = 60,
        min_band: float = 0.0,
        max_train_windows: int = 5000,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.n_jobs = n_jobs
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band
        self.max_train_windows = max_train_windows
        self.random_state = random_state

    def _check_model(self) -> None:
        require_int(self, "n_estimators", minimum=1)
        require_int(self, "min_samples_leaf", minimum=1)
        require_number(self, "max_features", minimum=0, maximum=1, exclusive_minimum=True)
        if self.n_jobs is not None:
            require_int(self, "n_jobs", minimum=1)

    def _fit_model(self, W: np.ndarray) -> Any:
        from sklearn.ensemble import ExtraTreesRegressor

        model = ExtraTreesRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        )
        return model.fit(W[:, :-1].astype(np.float32), W[:, -1])

    def _predict(self, C: np.ndarray) -> np.ndarray:
        return self.model_.predict(C.astype(np.float32))


@register
class KMeansPattern(WindowDetector):
    """Nearest-pattern forecaster: cluster windows of window + 1 points, match the context.

    MiniBatchKMeans learns ``n_clusters`` typical shapes of (context, next point). A scored
    point's context picks the centroid nearest on its first ``window`` coordinates, and that
    centroid's last coordinate is the expected value: "what usually followed a stretch like this".
    """

    name = "kmeans"
    summary = "mini-batch k-means on windows: the nearest pattern's next point is expected ± residual spread"
    param_docs = {
        "window": _WINDOW_DOC,
        "n_clusters": "patterns learned (capped by the number of training windows)",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
        "max_train_windows": _MAX_TRAIN_DOC,
        "random_state": _SEED_DOC,
    }

    def __init__(
        self,
        *,
        window: int = 30,
        n_clusters: int = 32,
        sensitivity: float = 4.0,
        min_history: int = 60,
        min_band: float = 0.0,
        max_train_windows: int = 5000,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.n_clusters = n_clusters
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band
        self.max_train_windows = max_train_windows
        self.random_state = random_state

    def _check_model(self) -> None:
        require_int(self, "n_clusters", minimum=1)

    def _fit_model(self, W: np.ndarray) -> np.ndarray:
        from sklearn.cluster import MiniBatchKMeans

        k = min(self.n_clusters, W.shape[0])
        km = MiniBatchKMeans(n_clusters=k, batch_size=1024, n_init=3, random_state=self.random_state)
        centers = km.fit(W).cluster_centers_
        # Re-estimate each pattern's next point as the mean target of the training windows whose
        # CONTEXT is nearest to it (how it is matched at score time): clustering on context and
        # target together biases the centroid's last coordinate towards the extremes it split on.
        # Patterns no context picks keep the centroid's own value.
        nearest = np.argmin(_distances(centers, W[:, :-1]), axis=1)
        counts = np.bincount(nearest, minlength=k)
        sums = np.bincount(nearest, weights=W[:, -1], minlength=k)
        centers[:, -1] = np.where(counts > 0, sums / np.maximum(counts, 1), centers[:, -1])
        return centers  # only the centroids are kept: small and fast to pickle

    def _predict(self, C: np.ndarray) -> np.ndarray:
        return self.model_[np.argmin(_distances(self.model_, C), axis=1), -1]


def _distances(centers: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared distances of contexts to the centroids' first ``window`` coordinates, up to a per-row constant."""
    head = centers[:, :-1]
    return (head * head).sum(axis=1)[None, :] - 2.0 * (C @ head.T)


@register
class SupportVector(WindowDetector):
    """Support-vector regression of the next value on the previous window.

    The epsilon-insensitive loss with epsilon 0 is an absolute (median) loss, so past anomalies
    in the pooled windows pull the fit far less than least squares would. ``kernel: rbf`` maps
    windows through a Nystroem approximation of the RBF kernel (``n_components`` features)
    before the linear SVR: non-linear, yet as fast to fit and predict as the linear one.
    """

    name = "svr"
    summary = "support-vector regression (RBF via Nystroem, or linear): next value from the window ± residual spread"
    param_docs = {
        "window": _WINDOW_DOC,
        "kernel": "'rbf' (Nystroem-approximated RBF kernel) or 'linear'",
        "C": "inverse regularisation strength",
        "epsilon": "half-width of the loss' insensitive zone, in robust sigmas (0: absolute loss)",
        "n_components": "Nystroem features for the RBF kernel",
        "gamma": "RBF kernel coefficient (none: 1 / window)",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
        "max_train_windows": _MAX_TRAIN_DOC,
        "random_state": _SEED_DOC,
    }

    def __init__(
        self,
        *,
        window: int = 30,
        kernel: str = "rbf",
        C: float = 1.0,
        epsilon: float = 0.0,
        n_components: int = 100,
        gamma: float | None = None,
        sensitivity: float = 4.0,
        min_history: int = 60,
        min_band: float = 0.0,
        max_train_windows: int = 5000,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.kernel = kernel
        self.C = C
        self.epsilon = epsilon
        self.n_components = n_components
        self.gamma = gamma
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band
        self.max_train_windows = max_train_windows
        self.random_state = random_state

    def _check_model(self) -> None:
        if self.kernel not in ("rbf", "linear"):
            raise ParamError("kernel", f"must be 'rbf' or 'linear', got {self.kernel!r}")
        require_number(self, "C", minimum=0, exclusive_minimum=True)
        require_number(self, "epsilon", minimum=0)
        require_int(self, "n_components", minimum=1)
        require_number(self, "gamma", minimum=0, exclusive_minimum=True, optional=True)

    def _fit_model(self, W: np.ndarray) -> tuple[Any, Any]:
        from sklearn.svm import LinearSVR

        svr = LinearSVR(
            C=self.C,
            epsilon=self.epsilon,
            loss="epsilon_insensitive",
            dual=True,
            max_iter=5000,
            random_state=self.random_state,
        )
        C = W[:, :-1]
        if self.kernel == "linear":
            return None, svr.fit(C, W[:, -1])
        from sklearn.kernel_approximation import Nystroem

        gamma = self.gamma if self.gamma is not None else 1.0 / self.window
        kernel = Nystroem(gamma=gamma, n_components=min(self.n_components, C.shape[0]), random_state=self.random_state)
        kernel.fit(C)
        return kernel, svr.fit(self._features(kernel, C), W[:, -1])

    @staticmethod
    def _features(kernel: Any, C: np.ndarray) -> np.ndarray:
        """[last value, window mean, RBF features]: persistence is the backbone of most metrics,
        and an RBF-only model would forget it outside its training range."""
        return np.hstack([C[:, -1:], C.mean(axis=1, keepdims=True), kernel.transform(C)])

    def _predict(self, C: np.ndarray) -> np.ndarray:
        kernel, svr = self.model_
        return svr.predict(C if kernel is None else self._features(kernel, C))
