"""Behaviour of the recommended default detector (``adaptive``) on seeded synthetic series.

Everything is replayed the way the live sidecar scores (``sidecar.replay.replay``) on a
5-minute grid with the recommended 7-day history refitted every hour, unless a test says
otherwise. No shared data is needed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import sidecar.detectors.adaptive  # noqa: F401  (registers the detector)
from sidecar.detectors import ParamError, build
from sidecar.detectors.adaptive import Adaptive, season_medians, trailing_sum
from sidecar.detectors.base import nanquantile_rows
from sidecar.replay import replay

STEP = 300.0  # 5-minute scrape
DAY = 288  # points per day
HISTORY = 7 * DAY
REFIT = 12


def grid(n: int) -> np.ndarray:
    return 1.7e9 + STEP * np.arange(n)


def run(x: np.ndarray, *, history: int = HISTORY, refit_every: int = REFIT, **params):
    """Replay the detector over x (1-D or 2-D) and return Scores."""
    det = build({"type": "adaptive", **params})
    X = np.atleast_2d(np.asarray(x, dtype=float))
    return replay(det, X, grid(X.shape[1]), history=history, refit_every=refit_every)


def first_alarm(score: np.ndarray, start: int) -> int | None:
    """Points after ``start`` until the first score > 1 (None: no alarm)."""
    hits = np.nonzero(np.nan_to_num(score[start:], nan=0.0) > 1)[0]
    return int(hits[0]) if hits.size else None


def daily(n: int, low: float = 20.0, high: float = 80.0) -> np.ndarray:
    """Square-ish daily cycle: high for 8 hours a day, like a business-hours metric."""
    phase = np.arange(n) % DAY
    return np.where((phase >= 96) & (phase < 192), high, low)


# -- quiet on noise -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda rng, shape: rng.normal(size=shape), id="gaussian"),
        pytest.param(lambda rng, shape: rng.standard_t(3, size=shape), id="student-t3"),
        pytest.param(lambda rng, shape: rng.laplace(size=shape), id="laplace"),
        pytest.param(lambda rng, shape: rng.lognormal(size=shape), id="lognormal"),
        pytest.param(lambda rng, shape: rng.poisson(0.05, size=shape).astype(float), id="sparse-counts"),
    ],
)
def test_clean_noise_stays_below_one_at_under_0_2_percent(noise) -> None:
    rng = np.random.default_rng(1)
    X = 50.0 + noise(rng, (8, HISTORY + 4000))
    s = run(X).score[:, HISTORY:]
    assert np.isfinite(s).all()
    assert np.mean(s > 1) < 0.002


def test_clean_daily_cycle_with_noise_stays_quiet() -> None:
    rng = np.random.default_rng(2)
    n = HISTORY + 6 * DAY
    X = daily(n) + rng.normal(0, 2, size=(4, n))
    s = run(X).score[:, HISTORY:]
    assert np.mean(s > 1) < 0.002


def test_step_like_clean_series_stays_quiet() -> None:
    """Piecewise-constant metric (replica count, config value): MAD is 0, the band must not collapse."""
    rng = np.random.default_rng(3)
    n = HISTORY + 3000
    levels = rng.choice([10.0, 11.0, 12.0], size=n // 60 + 1)
    x = np.repeat(levels, 60)[:n]
    s = run(x).score[0, HISTORY:]
    assert np.nanmax(s) <= 1


def test_perfect_square_wave_stays_quiet_with_short_history() -> None:
    x = daily(2 * DAY + 2000)
    s = run(x, history=2 * DAY).score[0, 2 * DAY :]
    assert np.nanmax(s) <= 1


# -- finds anomalies -------------------------------------------------------------------------
def noisy(n: int, seed: int, sigma: float = 1.0) -> np.ndarray:
    return 100.0 + np.random.default_rng(seed).normal(0, sigma, n)


def test_spike_is_flagged_at_once() -> None:
    x = noisy(HISTORY + 500, 4)
    x[HISTORY + 100] += 8
    s = run(x).score[0]
    assert s[HISTORY + 100] > 1
    assert np.mean(s[HISTORY:] > 1) < 0.005


@pytest.mark.parametrize("sign", [1, -1], ids=["up", "down"])
def test_level_shift_is_flagged_early_and_stays_up_for_a_while(sign: int) -> None:
    """A 3-sigma shift is inside the 5-sigma point band: the sustained-shift check must catch it."""
    x = noisy(HISTORY + 600, 5)
    x[HISTORY + 100 :] += sign * 3.0
    s = run(x).score[0]
    assert np.nanmax(s[HISTORY : HISTORY + 100]) <= 1
    lag = first_alarm(s, HISTORY + 100)
    assert lag is not None and lag <= 12
    # An alert rule with `for: 15m` sees it: at least 3 alarms in the first hour.
    assert np.sum(s[HISTORY + 100 : HISTORY + 112] > 1) >= 3


@pytest.mark.parametrize("refit_every", [1, 12])
def test_large_level_shift_pages_for_two_hours_whatever_the_refit_cadence(refit_every: int) -> None:
    x = noisy(HISTORY + 400, 6)
    x[HISTORY + 100 :] += 10.0
    s = run(x, refit_every=refit_every).score[0]
    assert (s[HISTORY + 100 : HISTORY + 100 + 24] > 1).all()


def test_a_past_outage_does_not_blind_the_next_one() -> None:
    """One extreme episode in the history is not 'normal' yet (it must recur in two blocks)."""
    x = noisy(HISTORY + 400, 24, sigma=5.0)
    x[HISTORY - 1000 : HISTORY - 994] = 0.0  # a 30-minute outage three and a half days ago
    x[HISTORY + 200 : HISTORY + 206] = 0.0
    s = run(x).score[0]
    assert (s[HISTORY + 200 : HISTORY + 206] > 1).all()
    assert np.mean(s[HISTORY:] > 1) < 0.03


def test_traffic_drop_to_zero_is_flagged_at_once_and_for_two_windows() -> None:
    x = noisy(HISTORY + 400, 7, sigma=5.0)
    x[HISTORY + 200 :] = 0.0
    s = run(x).score[0]
    assert (s[HISTORY + 200 : HISTORY + 224] > 1).all()


def test_variance_increase_is_flagged() -> None:
    rng = np.random.default_rng(8)
    x = 100.0 + rng.normal(0, 1, HISTORY + 600)
    x[HISTORY + 100 :] = 100.0 + rng.normal(0, 4, 500)
    s = run(x).score[0]
    assert np.nanmax(s[HISTORY : HISTORY + 100]) <= 1
    lag = first_alarm(s, HISTORY + 100)
    assert lag is not None and lag <= 12
    assert np.sum(s[HISTORY + 100 : HISTORY + 124] > 1) >= 3


def test_slow_ramp_is_flagged_eventually_not_at_its_start() -> None:
    """1 sigma every 20 points (~100 minutes); slower drifts need a longer `window` (limitation)."""
    x = noisy(HISTORY + 1100, 9)
    x[HISTORY + 100 :] += np.arange(1000) * 0.05
    s = run(x).score[0]
    lag = first_alarm(s, HISTORY + 100)
    assert lag is not None and 30 <= lag <= 200
    slower = noisy(HISTORY + 1100, 9)
    slower[HISTORY + 100 :] += np.arange(1000) * 0.01
    assert first_alarm(run(slower, window="3h").score[0], HISTORY + 100) is not None


def test_missing_daily_peak_is_flagged_on_a_seasonal_series() -> None:
    """The level band spans both plateaus; only the daily expectation sees a peak that never came."""
    rng = np.random.default_rng(10)
    n = HISTORY + 2 * DAY
    x = daily(n) + rng.normal(0, 2, n)
    day = HISTORY + DAY  # the second day after the history
    x[day + 96 : day + 192] = 20 + rng.normal(0, 2, 96)
    s = run(x).score[0]
    assert np.nanmax(s[HISTORY:day]) <= 1
    lag = first_alarm(s, day + 96)
    assert lag is not None and lag <= 3


def test_daily_expectation_follows_the_clock_even_after_a_gap() -> None:
    x = daily(HISTORY + DAY)
    det = Adaptive().fit(x[None, :HISTORY], grid(HISTORY))
    later = np.arange(HISTORY + 50, HISTORY + DAY)  # scored 50 points after the history ended
    out = det.score(x[None, later], grid(HISTORY + DAY)[later])
    np.testing.assert_allclose(out.expected[0], x[later])
    assert (out.score[0] == 0).all()


def test_denser_bursts_are_flagged_on_a_spiky_series() -> None:
    """Spikes of 20 every 50 points are normal; five in an hour are not."""
    n = HISTORY + 1000
    x = np.zeros(n)
    x[::50] = 20.0
    x[HISTORY + 500 : HISTORY + 512 : 2] = 20.0
    s = run(x).score[0]
    assert np.nanmax(s[HISTORY : HISTORY + 500]) <= 1
    assert np.nanmax(s[HISTORY + 500 : HISTORY + 512]) > 1


# -- edge cases ---------------------------------------------------------------------------------
def test_flat_series_then_tiny_jitter_is_quiet_but_a_real_change_is_not() -> None:
    x = np.full(HISTORY + 300, 45.0)
    x[HISTORY + 100 : HISTORY + 200] += np.random.default_rng(11).normal(0, 1e-9, 100)
    x[HISTORY + 250 :] = 46.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or all-NaN warnings
        s = run(x).score[0]
    assert np.isfinite(s[HISTORY:]).all()
    assert np.nanmax(s[HISTORY : HISTORY + 250]) < 1e-3
    assert s[HISTORY + 250] > 1


def test_constant_zero_series_scores_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = run(np.zeros(HISTORY + 100)).score[0, HISTORY:]
    assert (s == 0).all()


def test_nan_gaps_and_inf_are_missing_points_not_errors() -> None:
    x = noisy(HISTORY + 600, 12)
    x[HISTORY - 300 : HISTORY - 100] = np.nan  # a gap inside the history
    x[HISTORY + 50 : HISTORY + 80] = np.nan  # a gap among scored points
    x[HISTORY + 90] = np.inf
    x[HISTORY + 200] += 10  # a spike after the gaps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = run(x).score[0]
    gaps = np.isnan(x) | np.isinf(x)
    assert np.isnan(s[HISTORY:][gaps[HISTORY:]]).all()
    assert np.isfinite(s[HISTORY:][~gaps[HISTORY:]]).all()
    assert s[HISTORY + 200] > 1
    assert np.mean(s[HISTORY:][~gaps[HISTORY:]] > 1) < 0.01


def test_sparse_series_with_most_points_missing_still_scores() -> None:
    """Too few complete windows for the shift and jump checks: the level band still works."""
    rng = np.random.default_rng(25)
    x = noisy(HISTORY + 600, 26)
    x[rng.random(x.size) < 0.6] = np.nan
    x[HISTORY + 301] = 115.0
    s = run(x).score[0]
    present = ~np.isnan(x[HISTORY:])
    assert np.isfinite(s[HISTORY:][present]).all()
    assert s[HISTORY + 301] > 1
    assert np.mean(s[HISTORY:][present] > 1) < 0.01


def test_short_history_is_not_ready_and_scores_nan() -> None:
    det = Adaptive()
    x = noisy(det.min_history - 1, 13)
    det.fit(x[None, :], grid(x.size))
    assert not det.ready_.any()
    out = det.score(np.array([[100.0, 200.0]]), grid(x.size + 2)[-2:])
    for arr in (out.score, out.expected, out.lower, out.upper):
        assert np.isnan(arr).all()


def test_empty_history_does_not_crash() -> None:
    det = Adaptive().fit(np.empty((2, 0)), np.empty(0))
    assert not det.ready_.any()
    assert np.isnan(det.score(np.ones((2, 3)), grid(3)).score).all()


def test_all_nan_series_beside_a_normal_one() -> None:
    X = np.vstack([np.full(HISTORY + 50, np.nan), noisy(HISTORY + 50, 14)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = run(X).score
    assert np.isnan(s[0]).all()
    assert np.isfinite(s[1, HISTORY:]).all()


# -- contract ---------------------------------------------------------------------------------
def test_scoring_is_causal() -> None:
    """Changing later points never changes the scores of earlier ones, within one call or a replay."""
    x = noisy(HISTORY + 400, 15)
    y = x.copy()
    y[HISTORY + 200 :] += np.random.default_rng(16).normal(0, 20, 200)
    a, b = run(x).score[0], run(y).score[0]
    np.testing.assert_array_equal(a[: HISTORY + 200], b[: HISTORY + 200])
    det = Adaptive().fit(x[None, :HISTORY], grid(HISTORY))
    sa = det.score(x[None, HISTORY:], grid(x.size)[HISTORY:])
    sb = det.score(y[None, HISTORY:], grid(x.size)[HISTORY:])
    np.testing.assert_array_equal(sa.score[0, :200], sb.score[0, :200])
    np.testing.assert_array_equal(sa.upper[0, :200], sb.upper[0, :200])


def test_score_does_not_change_fitted_state() -> None:
    x = noisy(HISTORY + 100, 17)
    det = Adaptive().fit(x[None, :HISTORY], grid(HISTORY))
    before = {k: np.copy(v) for k, v in vars(det).items() if k.endswith("_")}
    first = det.score(x[None, HISTORY:], grid(x.size)[HISTORY:])
    second = det.score(x[None, HISTORY:], grid(x.size)[HISTORY:])
    np.testing.assert_array_equal(first.score, second.score)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(det, k), v)


def test_score_is_one_at_the_band_edges_and_band_holds_expected() -> None:
    x = daily(HISTORY + DAY) + np.random.default_rng(18).normal(0, 2, HISTORY + DAY)
    out = run(x)
    e, lo, up = out.expected[0, HISTORY:], out.lower[0, HISTORY:], out.upper[0, HISTORY:]
    assert (lo < e).all() and (e < up).all()
    det = Adaptive().fit(x[None, :HISTORY], grid(HISTORY))
    band = det.score(x[None, HISTORY : HISTORY + 1], grid(HISTORY + 1)[-1:])
    for edge in (band.lower, band.upper):
        at_edge = det.score(edge, grid(HISTORY + 1)[-1:])
        np.testing.assert_allclose(at_edge.score, 1.0)


def test_series_in_one_batch_score_as_if_alone() -> None:
    """Vectorised over series: a row's scores do not depend on the other rows of the batch."""
    rng = np.random.default_rng(19)
    n = HISTORY + 300
    X = np.vstack([noisy(n, 20), daily(n) + rng.normal(0, 2, n), np.zeros(n)])
    X[0, HISTORY + 50] += 9
    together = run(X).score
    for i in range(X.shape[0]):
        np.testing.assert_allclose(run(X[i]).score[0], together[i], equal_nan=True)


def test_not_brittle_to_refit_cadence_or_shorter_history() -> None:
    x = noisy(HISTORY + 800, 21)
    x[HISTORY + 400] += 10
    for history, refit in ((HISTORY, 1), (HISTORY, 36), (DAY, 12), (DAY // 2, 1)):
        s = run(x, history=history, refit_every=refit).score[0, HISTORY:]
        assert s[400] > 1, (history, refit)
        assert np.mean(s > 1) < 0.005, (history, refit)


@pytest.mark.parametrize(
    "params",
    [{"sensitivity": 0}, {"season": "often"}, {"window": -1}, {"tighten": 1.5}, {"min_periods": 1}, {"min_band": -1}],
)
def test_bad_parameters_name_the_parameter(params: dict) -> None:
    det = Adaptive(**params)
    with pytest.raises(ParamError) as err:
        det.check_params()
    assert err.value.param == next(iter(params))


def test_helpers_match_numpy() -> None:
    rng = np.random.default_rng(22)
    Xs = rng.normal(size=(3, 5, 4))
    Xs[0, 1, 2] = np.nan
    Xs[1, :, 3] = np.nan
    median, loo = season_medians(Xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN phase
        np.testing.assert_allclose(median, np.nanmedian(Xs, axis=1), equal_nan=True)
    for a in range(3):
        for k in range(5):
            for p in range(4):
                if not np.isnan(Xs[a, k, p]):
                    assert loo[a, k, p] == pytest.approx(np.nanmedian(np.delete(Xs[a, :, p], k)))
    X = rng.normal(size=(2, 30))
    X[0, 5:9] = np.nan
    s, n = trailing_sum(X, 4)
    for j in range(30):
        window = X[:, max(0, j - 3) : j + 1]
        np.testing.assert_allclose(s[:, j], np.nansum(window, axis=1))
        np.testing.assert_array_equal(n[:, j], np.sum(~np.isnan(window), axis=1))


@pytest.mark.parametrize("seasons", [4, 5], ids=["odd-others", "even-others"])
def test_season_medians_without_gaps_match_numpy(seasons: int) -> None:
    """The gap-free path (one order statistic for every phase) gives the same medians."""
    rng = np.random.default_rng(27)
    Xs = np.round(rng.normal(size=(3, seasons, 6)), 1)  # ties included
    median, loo = season_medians(Xs)
    np.testing.assert_array_equal(median, np.median(Xs, axis=1))
    for a in range(3):
        for k in range(seasons):
            for p in range(6):
                assert loo[a, k, p] == np.median(np.delete(Xs[a, :, p], k))


def test_trailing_sum_without_gaps_counts_the_window() -> None:
    X = np.random.default_rng(28).normal(size=(3, 20))
    s, n = trailing_sum(X, 5)
    for j in range(20):
        np.testing.assert_allclose(s[:, j], X[:, max(0, j - 4) : j + 1].sum(axis=1))
        np.testing.assert_array_equal(n[:, j], min(j + 1, 5))


def test_row_quantiles_match_numpy_whatever_the_gaps() -> None:
    """The shared row quantiles (medians and MADs of every check) agree with numpy, gaps or not."""
    rng = np.random.default_rng(29)
    X = np.round(rng.normal(size=(40, 33)), 1)
    X[:, :3] = np.nan
    X[30:, 10:20] = np.nan
    X[35:, :] = np.nan  # all-NaN rows
    X[20, 5] = X[21, 7] = X[22, 5:9] = np.nan
    qs = (0.5, 0.1, 0.9, 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        expected = np.nanquantile(X, qs, axis=1)
    for got, want in zip(nanquantile_rows(X, qs), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)
    full = X[:20, 3:]  # no gaps
    for got, want in zip(nanquantile_rows(full, qs), np.quantile(full, qs, axis=1)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_young_series_keep_the_level_band_until_the_history_holds_enough_windows():
    """Shift and jump spreads from a handful of windows would tighten the band on noise."""
    from sidecar.detectors import build

    step, w = 60.0, 10  # window "10m" at one-minute steps
    rng = np.random.default_rng(3)
    x = 10 + rng.normal(0, 1, 400)
    t = 1.7e9 + step * np.arange(400)
    shifted = np.full((1, 20), 12.5)  # a 2.5-sigma sustained shift: only the shift check sees it
    scores = {}
    for n in (5 * w, 300):  # 5 windows of history (young), 30 windows (grown)
        det = build({"type": "adaptive", "window": "10m", "min_history": 30}).fit(x[None, -n:], t[-n:])
        s = det.score(shifted, t[-1] + step * np.arange(1, 21))
        scores[n] = s.score[0, -1]
        if n == 5 * w:
            np.testing.assert_allclose(s.upper[0], (det.level_ + det.center_ + det.half_up_)[0])  # the level band alone
    assert scores[5 * w] < 1 < scores[300]
