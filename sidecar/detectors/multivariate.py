"""Multivariate detectors: one score per row of a metrics table, for backtests.

A backtest CSV ``timestamp,<name1>,<name2>,...`` holds one vector of metrics per row (latency,
error ratio, throughput, ...). A multivariate detector learns their joint behaviour from
training rows and scores each later row as a whole, so it sees what no univariate band can:
a row whose metrics are each in range but break their usual relation (throughput up while
GPU use falls).

Interface, with the habits of :class:`sidecar.detectors.Detector`: a keyword-only ``__init__``
that only stores parameters, ``check_params()`` raising :class:`ParamError`, ``fit(X)`` on
(n_samples, n_features) returning ``self`` and learning state whose names end in ``_``, and
``score(X)`` returning :class:`MultivariateScores`:

- ``score`` (n_samples,): 0 typical, exactly 1 at the detector's calibrated threshold, above 1
  anomalous (the univariate semantics);
- ``contributions`` (n_samples, n_features): non-negative, and each row SUMS TO ITS SCORE, so
  a feature's contribution reads "this much of the score is due to this metric".

Shared data handling:

- Training uses complete rows (NaN in a modelled feature drops the row); fewer than
  ``max(min_samples, n_features + 2)`` of them raises :class:`NotEnoughDataError` (a ValueError).
- Features are standardised robustly (median, 1.4826·MAD, mean absolute deviation where MAD is 0).
- A feature constant in training is not modelled: while it keeps its value it adds nothing,
  and any change makes the row anomalous and is attributed to it (as for univariate detectors).
  A feature never observed in training is ignored.
- At score time a row with missing features is completed with the conditional expectation of
  the missing features given the observed ones under the robust Gaussian model (for
  Mahalanobis this is exact: the score is the marginal distance of the observed features,
  calibrated on their number). Missing features contribute 0; a row with nothing observed
  scores NaN.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

import numpy as np
from scipy.special import gammainc, gammaincinv

from sidecar.detectors.base import NotFittedError, Params, quiet_nan_warnings, require_int, require_number
from sidecar.detectors.ml import require_seed, single_threaded
from sidecar.detectors.registry import build_from, register_into

#: The multivariate detector used when a backtest names none.
DEFAULT_MULTIVARIATE = "mahalanobis"

#: Smallest scale of a standardised feature, relative to max(1, |median|).
_SCALE_FLOOR = 1e-9
#: Ridge added to robust covariances (relative to their mean variance): keeps collinear features invertible.
_RIDGE = 1e-6
#: Rows beyond this chi-square quantile are dropped when the robust covariance is reweighted.
_REWEIGHT_Q = 0.975


def chi2_ppf(q: float, df: Any) -> Any:
    """Chi-square quantile (scipy.stats costs most of a second to import; scipy.special does not)."""
    return 2.0 * gammaincinv(np.asarray(df, dtype=float) / 2.0, q)


def chi2_cdf(x: float, df: float) -> float:
    return float(gammainc(df / 2.0, x / 2.0))


class NotEnoughDataError(ValueError):
    """Too few usable (complete) training rows to fit."""


@dataclass(frozen=True)
class MultivariateScores:
    """Per-row score and per-feature contributions (non-negative, each row sums to its score)."""

    score: np.ndarray
    contributions: np.ndarray


def check_matrix(X: Any) -> np.ndarray:
    """2-D float (n_samples, n_features); one 1-D vector is one row; ±Inf is missing."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[np.newaxis, :]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        X = np.where(np.isfinite(X), X, np.nan)
    return X


class MultivariateDetector(Params):
    """Base class: parameters, checks, fit/score plumbing; subclasses implement ``_fit``/``_score``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "statistical"
    summary: ClassVar[str] = ""
    param_docs: ClassVar[dict[str, str]] = {}

    min_samples: int

    def check_params(self) -> "MultivariateDetector":
        """Raise :class:`ParamError` naming the first bad parameter."""
        require_int(self, "min_samples", minimum=2)  # type: ignore[arg-type]
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Subclass hook."""

    # -- fit / score ---------------------------------------------------------------------
    def fit(self, X: Any) -> "MultivariateDetector":
        """Learn from training rows ``X`` (n_samples, n_features); returns ``self``."""
        self.check_params()
        X = check_matrix(X)
        median, scale, modelled, constant = _robust_standardiser(X)
        rows = ~np.isnan(X[:, modelled]).any(axis=1)
        need = max(self.min_samples, int(modelled.sum()) + 2)
        if rows.sum() < need:  # raised before any state changes: a previous fit stays usable
            raise NotEnoughDataError(
                f"{type(self).__name__} needs at least {need} complete training rows, "
                f"got {int(rows.sum())} of {X.shape[0]}"
            )
        self.n_features_ = X.shape[1]
        self.median_, self.scale_, self.modelled_, self.constant_ = median, scale, modelled, constant
        self.n_train_ = int(rows.sum())
        if self.modelled_.any():  # else only constant features: their changes are all there is to see
            with single_threaded():
                self._fit(self._standardise(X[rows])[:, self.modelled_])
        return self

    def score(self, X: Any) -> MultivariateScores:
        """Score every row of ``X``; rows are independent (no row uses another)."""
        if not hasattr(self, "n_features_"):
            raise NotFittedError(f"{type(self).__name__} must be fitted before score()")
        X = check_matrix(X)
        if X.shape[1] != self.n_features_:
            raise ValueError(f"X has {X.shape[1]} features, the detector was fitted on {self.n_features_}")
        Z = self._standardise(X)
        if self.modelled_.any():
            with single_threaded():
                stat, limit, terms = self._score(Z[:, self.modelled_])
        else:
            stat, limit, terms = np.zeros(X.shape[0]), np.ones(X.shape[0]), np.zeros((X.shape[0], 0))
        # Constant features: any change adds (x - c)^2 / floor^2 to the statistic, attributed to them.
        const = np.where(np.isnan(Z) | ~self.constant_[None, :], 0.0, Z * Z)
        full_terms = const.copy()
        full_terms[:, self.modelled_] = terms
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.sqrt((stat + const.sum(axis=1)) / limit)
            total = full_terms.sum(axis=1, keepdims=True)
            contributions = np.where(total > 0, score[:, None] * full_terms / total, 0.0)
        nothing = np.isnan(X[:, self.modelled_ | self.constant_]).all(axis=1)
        score = np.where(nothing, np.nan, score)
        contributions = np.where(nothing[:, None], np.nan, contributions)
        return MultivariateScores(score, contributions)

    def _fit(self, Z: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From standardised modelled features (NaN = missing): the statistic, the limit it is
        compared with (score = sqrt(statistic / limit)) and non-negative per-feature terms."""
        raise NotImplementedError

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.median_) / self.scale_
        return np.where(self.modelled_ | self.constant_, Z, np.nan)


def _robust_standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature median and scale (1.4826·MAD, mean absolute deviation where MAD is 0), and
    the masks of modelled (varying) and constant features; never-observed features are neither."""
    with quiet_nan_warnings():
        med = np.nanmedian(X, axis=0)
        mad = 1.4826 * np.nanmedian(np.abs(X - med), axis=0)
        mean_ad = 1.2533 * np.nanmean(np.abs(X - med), axis=0)
    spread = np.where(mad > 0, mad, mean_ad)
    seen = ~np.isnan(med)
    modelled = seen & (spread > 0)
    constant = seen & ~(spread > 0)
    median = np.where(seen, med, 0.0)
    # Constant features get a tiny scale: unchanged they stay 0, any change is huge but finite.
    floor = _SCALE_FLOOR * np.maximum(1.0, np.abs(median))
    return median, np.where(modelled, spread, floor), modelled, constant


# -- robust Gaussian model ----------------------------------------------------------------------
def _ledoit_wolf(D: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred rows plus a small ridge (collinear features)."""
    from sklearn.covariance import ledoit_wolf

    if D.shape[1] == 1:
        cov = np.atleast_2d(np.mean(D * D))
    else:
        cov = ledoit_wolf(D, assume_centered=True)[0]
    return cov + _RIDGE * max(float(np.trace(cov)) / cov.shape[0], 1e-12) * np.eye(cov.shape[0])


def _mahalanobis2(D: np.ndarray, cov: np.ndarray) -> np.ndarray:
    P = np.linalg.inv(cov)
    return np.einsum("ij,jk,ik->i", D, P, D)


def robust_gaussian(Z: np.ndarray, support_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic reweighted MCD-style location and covariance of complete rows ``Z``.

    Start from the Spearman correlation (ranks bound an outlier's pull; mapped to Pearson by
    2·sin(πρ/6)) around the medians, then concentration steps: keep the ``support_fraction``
    of rows nearest in Mahalanobis distance and re-estimate (Ledoit-Wolf), until the support
    stops changing. Rescale so that the median distance matches χ², then reweight: drop rows
    beyond the χ² 97.5 % quantile and re-estimate with the consistency factor of that cut.
    Robust to a large share of contaminated training rows, and fast (no random subsets).
    """
    n, p = Z.shape
    loc = np.zeros(p)  # Z is centred on the medians already
    if p == 1:
        cov = np.ones((1, 1))
    else:
        from scipy.stats import rankdata

        rho = np.corrcoef(rankdata(Z, axis=0), rowvar=False)
        rho = np.nan_to_num(rho, nan=0.0)
        cov = 2.0 * np.sin(np.pi * rho / 6.0)
        np.fill_diagonal(cov, 1.0)
        vals, vecs = np.linalg.eigh(cov)
        cov = (vecs * np.maximum(vals, 1e-3)) @ vecs.T
    h = min(n, max(p + 1, int(math.ceil(support_fraction * n))))
    support = None
    for _ in range(20):
        d2 = _mahalanobis2(Z - loc, cov)
        new = np.sort(np.argpartition(d2, h - 1)[:h]) if h < n else np.arange(n)
        if support is not None and np.array_equal(new, support):
            break
        support = new
        loc = Z[support].mean(axis=0)
        cov = _ledoit_wolf(Z[support] - loc)
    d2 = _mahalanobis2(Z - loc, cov)
    factor = float(np.median(d2)) / chi2_ppf(0.5, p)
    if factor > 0:
        cov = cov * factor
        d2 = d2 / factor
    keep = d2 <= chi2_ppf(_REWEIGHT_Q, p)
    if keep.sum() > p + 1:
        loc = Z[keep].mean(axis=0)
        consistency = chi2_cdf(chi2_ppf(_REWEIGHT_Q, p), p + 2) / _REWEIGHT_Q
        cov = _ledoit_wolf(Z[keep] - loc) / consistency
    return loc, cov


class _RobustGaussianDetector(MultivariateDetector):
    """Shared: robust location/covariance of the standardised modelled features, and completion of rows."""

    support_fraction: float

    def _check_params(self) -> None:
        require_number(self, "support_fraction", minimum=0.5, maximum=1.0)  # type: ignore[arg-type]
        self._check_model()

    def _check_model(self) -> None:
        """Subclass hook."""

    def _fit(self, Z: np.ndarray) -> None:
        self.location_, self.covariance_ = robust_gaussian(Z, self.support_fraction)
        self.precision_ = np.linalg.inv(self.covariance_)
        self._fit_model()

    def _fit_model(self) -> None:
        """Subclass hook, after the robust Gaussian is known."""

    def _complete(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centred rows with missing features set to their conditional expectation given the
        observed ones, and the observed mask. Loops over distinct missing patterns, not rows."""
        D = Z - self.location_
        observed = ~np.isnan(D)
        partial = ~observed.all(axis=1) & observed.any(axis=1)
        if partial.any():
            idx = np.flatnonzero(partial)
            patterns, inverse = np.unique(observed[idx], axis=0, return_inverse=True)
            S = self.covariance_
            for k, obs in enumerate(patterns):
                rows = idx[np.asarray(inverse).reshape(-1) == k]
                mis = ~obs
                coef = np.linalg.solve(S[np.ix_(obs, obs)], S[np.ix_(obs, mis)])  # (n_obs, n_mis)
                D[np.ix_(rows, mis)] = D[np.ix_(rows, obs)] @ coef
        return np.where(observed.any(axis=1, keepdims=True), D, 0.0), observed


def _robust_params_check(det: Any) -> None:
    require_number(det, "alpha", minimum=0, maximum=0.5, exclusive_minimum=True)


# -- registry -------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[MultivariateDetector]] = {}

M = TypeVar("M", bound=type[MultivariateDetector])


def register_multivariate(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    return register_into(_REGISTRY, cls, "multivariate detector")


def available_multivariate() -> dict[str, type[MultivariateDetector]]:
    """All multivariate detectors by name, sorted."""
    return dict(sorted(_REGISTRY.items()))


def build_multivariate(spec: str | Mapping[str, Any] | None) -> MultivariateDetector:
    """Build and check a detector from a name or ``{type: NAME, **params}``; None is the default.

    Errors are :class:`DetectorSpecError` with the path of the bad key, as for univariate specs.
    """
    return build_from(spec, available_multivariate(), DEFAULT_MULTIVARIATE, "multivariate detector")  # type: ignore[return-value]


# -- detectors ----------------------------------------------------------------------------------
_ALPHA_DOC = "share of typical rows expected above 1 (the threshold is the 1 - alpha quantile)"
_MIN_SAMPLES_DOC = "complete training rows needed to fit (at least n_features + 2 are always needed)"
_SUPPORT_DOC = "share of training rows the robust covariance rests on (0.5-1; lower resists more contamination)"


@register_multivariate
class Mahalanobis(_RobustGaussianDetector):
    """Robust Mahalanobis distance, calibrated on the χ² distribution.

    score = sqrt(d² / χ²_{1-alpha}(k)) with k the number of observed modelled features, so a
    Gaussian row exceeds 1 with probability alpha. Contributions split the score by the terms
    z_i·(Σ⁻¹z)_i of d² (clipped at 0): the feature that breaks the usual relation gets the share.
    """

    name = "mahalanobis"
    summary = "robust (reweighted MCD-style) Mahalanobis distance; 1 = the chi-square 1 - alpha quantile"
    param_docs = {"alpha": _ALPHA_DOC, "support_fraction": _SUPPORT_DOC, "min_samples": _MIN_SAMPLES_DOC}

    def __init__(self, *, alpha: float = 1e-3, support_fraction: float = 0.75, min_samples: int = 30) -> None:
        self.alpha = alpha
        self.support_fraction = support_fraction
        self.min_samples = min_samples

    def _check_model(self) -> None:
        _robust_params_check(self)

    def _score(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        D, observed = self._complete(Z)
        PD = D @ self.precision_
        terms = np.where(observed, np.maximum(D * PD, 0.0), 0.0)
        d2 = np.maximum(np.einsum("ij,ij->i", D, PD), 0.0)
        k = np.maximum(observed.sum(axis=1), 1)
        return d2, chi2_ppf(1 - self.alpha, k), terms


@register_multivariate
class PCAResidual(_RobustGaussianDetector):
    """Robust PCA monitoring: squared reconstruction error (Q/SPE) and Hotelling's T².

    Principal components of the robust covariance keep ``variance`` of it. SPE, the squared
    distance of the row from that subspace, catches breaks of the correlation structure; T²,
    the Mahalanobis distance within it, catches moves along it. Each is divided by its
    1 - alpha/2 limit (SPE: Box's g·χ²(h) approximation from the discarded eigenvalues; T²: χ²(k))
    and the larger wins, so a Gaussian row exceeds 1 with probability about alpha. Contributions
    are the per-feature squared residuals (SPE) or z_i·(P z)_i within the subspace (T²).
    With many collinear features this is steadier than a full Mahalanobis distance, whose
    smallest-variance directions amplify noise.
    """

    name = "pca"
    summary = "robust PCA: reconstruction error (SPE) or T² in the subspace, whichever is further over its limit"
    param_docs = {
        "variance": "share of the robust covariance the kept components explain (0-1]",
        "n_components": "components to keep (none: chosen by variance); at most n_features - 1",
        "alpha": _ALPHA_DOC,
        "support_fraction": _SUPPORT_DOC,
        "min_samples": _MIN_SAMPLES_DOC,
    }

    def __init__(
        self,
        *,
        variance: float = 0.9,
        n_components: int | None = None,
        alpha: float = 1e-3,
        support_fraction: float = 0.75,
        min_samples: int = 30,
    ) -> None:
        self.variance = variance
        self.n_components = n_components
        self.alpha = alpha
        self.support_fraction = support_fraction
        self.min_samples = min_samples

    def _check_model(self) -> None:
        _robust_params_check(self)
        require_number(self, "variance", minimum=0, maximum=1, exclusive_minimum=True)  # type: ignore[arg-type]
        if self.n_components is not None:
            require_int(self, "n_components", minimum=1)  # type: ignore[arg-type]

    def _fit_model(self) -> None:
        vals, vecs = np.linalg.eigh(self.covariance_)
        vals, vecs = np.maximum(vals[::-1], 0.0), vecs[:, ::-1]
        p = vals.size
        if self.n_components is not None:
            k = self.n_components
        else:
            k = int(np.searchsorted(np.cumsum(vals) / vals.sum(), self.variance - 1e-12) + 1)
        k = min(k, p - 1)  # keep a residual space (k = 0 with one feature: SPE is its z²)
        self.components_ = vecs[:, :k]
        self.eigenvalues_ = vals
        rest = vals[k:]
        theta1, theta2 = float(rest.sum()), float((rest**2).sum())
        a = self.alpha / 2  # Bonferroni over the two statistics
        if theta1 > 0 and theta2 > 0:
            g, h = theta2 / theta1, theta1**2 / theta2
            self.spe_limit_ = float(g * chi2_ppf(1 - a, h))
        else:
            self.spe_limit_ = float(np.finfo(float).tiny)
        self.t2_limit_ = float(chi2_ppf(1 - a, k)) if k else np.inf
        self.t2_precision_ = (self.components_ / np.maximum(vals[:k], 1e-12)) @ self.components_.T

    def _score(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        D, observed = self._complete(Z)
        V = self.components_
        R = D - (D @ V) @ V.T
        spe_terms = np.where(observed, R * R, 0.0)  # only observed features' residuals count
        spe = spe_terms.sum(axis=1)
        PD = D @ self.t2_precision_
        t2_terms = np.where(observed, np.maximum(D * PD, 0.0), 0.0)
        t2 = np.maximum(np.einsum("ij,ij->i", D, PD), 0.0)
        use_spe = spe / self.spe_limit_ >= t2 / self.t2_limit_
        stat = np.where(use_spe, spe, t2)
        limit = np.where(use_spe, self.spe_limit_, self.t2_limit_)
        terms = np.where(use_spe[:, None], spe_terms, t2_terms)
        return stat, limit, terms


@register_multivariate
class IsolationForestDetector(MultivariateDetector):
    """Isolation forest: rows that random axis-parallel splits isolate quickly are anomalous.

    The isolation score s (about 0.5 typical, near 1 anomalous) is mapped linearly so that the
    median training score is 0 and the 1 - alpha quantile of the training scores is 1 (with
    fewer than 1/alpha training rows that quantile is near their maximum). Contributions split
    the score by the features' squared robust z-scores: an APPROXIMATION that names the
    features far from their medians, not the splits that isolated the row; for a row that
    breaks a correlation while each feature stays in range it names both features alike.
    Missing values are set to the training medians (the forest has no conditional model).

    Limits worth knowing: isolation depth saturates at the edge of the training range, so a
    value far beyond it scores like the most extreme training value, and scores stay bounded
    (about 1.5 at most on typical tables). It makes no Gaussian assumption (several operating
    regimes are fine) but is weaker than ``mahalanobis`` on single far-out metrics and on
    subtle correlation breaks.
    """

    name = "isolation_forest"
    family = "machine_learning"
    summary = "isolation forest; 1 = the 1 - alpha quantile of the training rows' isolation scores"
    param_docs = {
        "n_estimators": "trees in the forest",
        "max_samples": "rows each tree is grown on",
        "alpha": "share of training rows above 1 (calibration quantile 1 - alpha)",
        "random_state": "seed of the forest; a fixed value makes fits reproducible",
        "min_samples": _MIN_SAMPLES_DOC,
    }

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        alpha: float = 0.01,
        random_state: int | None = 0,
        min_samples: int = 30,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.alpha = alpha
        self.random_state = random_state
        self.min_samples = min_samples

    def _check_params(self) -> None:
        require_int(self, "n_estimators", minimum=1)  # type: ignore[arg-type]
        require_int(self, "max_samples", minimum=2)  # type: ignore[arg-type]
        _robust_params_check(self)
        require_seed(self, "random_state")  # type: ignore[arg-type]

    def _fit(self, Z: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, Z.shape[0]),
            random_state=self.random_state,
        )
        self.forest_ = forest.fit(Z)
        s = -forest.score_samples(Z)
        lo, hi = np.quantile(s, [0.5, 1 - self.alpha])
        self.typical_, self.threshold_ = float(lo), float(max(hi, lo + 1e-9))

    def _score(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        filled = np.nan_to_num(Z, nan=0.0)  # 0 = the training median in robust units
        s = -self.forest_.score_samples(filled)
        score = np.maximum(s - self.typical_, 0.0) / (self.threshold_ - self.typical_)
        terms = np.where(np.isnan(Z), 0.0, Z * Z)
        # score = sqrt(stat / limit) in the base class: hand it score² with limit 1.
        return score**2, np.ones_like(score), terms


# -- causal replay ------------------------------------------------------------------------------
def replay_multivariate(
    detector: MultivariateDetector,
    X: Any,
    *,
    history: int,
    refit_every: int = 1,
    start: int | None = None,
) -> MultivariateScores:
    """Score every row of ``X`` causally, as a live multivariate scorer refitting on a schedule.

    Before row b = start, start + refit_every, ... the detector is refitted on the trailing
    ``history`` rows [b - history, b) and scores rows [b, b + refit_every) with that fit; no
    row is scored with a model that saw it or any later row. Rows before ``start`` (default
    ``detector.min_samples``), and rows whose window has too few complete rows, stay NaN.
    """
    X = check_matrix(X)
    if history < 1 or refit_every < 1:
        raise ValueError("history and refit_every must be >= 1")
    detector.check_params()
    if history < detector.min_samples:
        raise ValueError(f"history ({history}) must be at least the detector's min_samples ({detector.min_samples})")
    n = X.shape[0]
    score = np.full(n, np.nan)
    contributions = np.full(X.shape, np.nan)
    start = detector.min_samples if start is None else start
    det = copy.deepcopy(detector)
    for b in range(max(start, 1), n, refit_every):
        try:
            det.fit(X[max(0, b - history) : b])
        except NotEnoughDataError:
            continue
        s = det.score(X[b : b + refit_every])
        score[b : b + refit_every] = s.score
        contributions[b : b + refit_every] = s.contributions
    return MultivariateScores(score, contributions)
