"""Detector conformance (every registered detector) and behaviour of the statistical family."""

import pickle

import numpy as np
import pytest

from sidecar.detectors import Detector, NotFittedError, ParamError, available, band_score, build

STEP = 60.0
# Parameters that let a detector fit on a few hours of one-minute data in a test.
TEST_PARAMS = {
    "static_threshold": {"min": -5.0, "max": 5.0},
    "seasonal": {"period": "1h", "bins": 12},
}
ALL = sorted(available())


def make(name, **extra):
    return build({"type": name, **TEST_PARAMS.get(name, {}), **extra})


def noise(n_series=8, n_time=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n_series, n_time)), STEP * np.arange(n_time) + 1.7e9


def split(X, t, at):
    return X[:, :at], t[:at], X[:, at:], t[at:]


# -- conformance: every registered detector ----------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_init_only_stores_parameters_untouched(name):
    cls = available()[name]
    params = {**cls.param_defaults(), **TEST_PARAMS.get(name, {})}
    det = cls(**params)
    assert det.get_params() == params
    assert not [a for a in vars(det) if a.endswith("_")], "learned state before fit"
    # Bad values are accepted by __init__ and rejected by check_params, naming the parameter.
    bad = cls(**{**params, "min_history": -3})
    with pytest.raises(ParamError) as err:
        bad.check_params()
    assert err.value.param == "min_history"


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameters_are_a_type_error(name):
    with pytest.raises(TypeError):
        available()[name](no_such_parameter=1)


@pytest.mark.parametrize("name", ALL)
def test_fit_returns_self_and_learns_state_ending_in_underscore(name):
    X, t = noise()
    det = make(name)
    assert det.fit(X, t) is det
    assert det.ready_.shape == (X.shape[0],) and det.ready_.all()
    assert det.n_series_ == X.shape[0]


@pytest.mark.parametrize("name", ALL)
def test_score_before_fit_raises(name):
    X, t = noise()
    with pytest.raises(NotFittedError):
        make(name).score(X, t)


@pytest.mark.parametrize("name", ALL)
def test_scores_are_non_negative_with_ordered_band_and_the_shape_of_the_input(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    s = make(name).fit(Xh, th).score(Xn, tn)
    for arr in (s.score, s.expected, s.lower, s.upper):
        assert arr.shape == Xn.shape
    assert np.all(s.score >= 0)
    assert np.all(s.lower <= s.expected) and np.all(s.expected <= s.upper)


@pytest.mark.parametrize("name", ALL)
def test_score_is_0_at_expected_and_exactly_1_at_the_band_edges(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    det = make(name).fit(Xh, th)
    first = det.score(Xn[:, :1], tn[:1])  # the first point's band depends on the fit only
    for values, want in ((first.expected, 0.0), (first.upper, 1.0), (first.lower, 1.0)):
        finite = np.isfinite(values[:, 0])
        s = det.score(np.where(finite[:, None], values, 0.0), tn[:1]).score
        np.testing.assert_allclose(s[finite, 0], want, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_an_obvious_spike_scores_above_1_and_clean_points_below(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    Xn = Xn.copy()
    Xn[3, 50] = 25.0
    s = make(name).fit(Xh, th).score(Xn, tn)
    assert s.score[3, 50] > 1
    assert np.nanmean(s.score < 1) > 0.95


@pytest.mark.parametrize("name", ALL)
def test_scoring_does_not_change_the_fitted_state(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    det = make(name).fit(Xh, th)
    a = det.score(Xn, tn)
    det.score(Xn[:, :10] + 100, tn[:10])
    b = det.score(Xn, tn)
    np.testing.assert_array_equal(a.score, b.score)


@pytest.mark.parametrize("name", ALL)
def test_scores_are_causal(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    det = make(name).fit(Xh, th)
    a = det.score(Xn, tn)
    changed = Xn.copy()
    changed[:, 60:] += 50
    b = det.score(changed, tn)
    np.testing.assert_array_equal(a.score[:, :60], b.score[:, :60])
    np.testing.assert_array_equal(a.expected[:, :60], b.expected[:, :60])


@pytest.mark.parametrize("name", ALL)
def test_nan_gaps_give_nan_scores_there_and_finite_scores_elsewhere(name):
    X, t = noise()
    X[:, 100:130] = np.nan  # gap in the history
    X[2, ::7] = np.nan
    X[:, 320] = np.nan  # gap among the scored points
    X[5, 330] = np.inf  # a division by zero upstream
    Xh, th, Xn, tn = split(X, t, 300)
    s = make(name).fit(Xh, th).score(Xn, tn)
    assert np.isnan(s.score[:, 20]).all()
    assert np.isnan(s.score[5, 30])
    ok = ~np.isnan(Xn) & np.isfinite(Xn)
    assert np.isfinite(s.score[ok]).all()


@pytest.mark.parametrize("name", ALL)
def test_constant_series_score_0_when_unchanged_and_above_1_when_changed(name):
    t = STEP * np.arange(400) + 1.7e9
    X = np.full((2, 400), 3.0)
    X[1] = 0.0
    det = make(name).fit(X[:, :300], t[:300])
    same = det.score(X[:, 300:], t[300:])
    assert np.all(same.score == 0)
    # Any change of a constant is news, except to fixed bounds, which only see leaving them.
    jump = 10.0 if name == "static_threshold" else 1.0
    moved = det.score(X[:, 300:] + jump, t[300:])
    assert np.all(moved.score[:, 0] > 1)
    assert np.all(np.isfinite(moved.score[:, 0]))


@pytest.mark.parametrize("name", ALL)
def test_too_little_history_means_not_ready_and_no_score(name):
    X, t = noise()
    det = make(name)
    short = det.min_history - 1
    Xh = X[:, :300].copy()
    Xh[0, :] = np.nan
    Xh[0, -short:] = 1.0 if short > 0 else np.nan
    s = det.fit(Xh, t[:300]).score(X[:, 300:], t[300:])
    assert not det.ready_[0] and det.ready_[1:].all()
    assert np.isnan(s.score[0]).all() and np.isnan(s.expected[0]).all()
    assert np.isfinite(s.score[1:]).all()


@pytest.mark.parametrize("name", ALL)
def test_fitted_state_round_trips_through_pickle(name):
    X, t = noise()
    Xh, th, Xn, tn = split(X, t, 300)
    det = make(name).fit(Xh, th)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(det.score(Xn, tn).score, again.score(Xn, tn).score)


@pytest.mark.parametrize("name", ALL)
def test_shape_mismatches_are_clear_errors(name):
    X, t = noise()
    det = make(name).fit(X, t)
    with pytest.raises(ValueError, match="series"):
        det.score(X[:3], t)
    with pytest.raises(ValueError, match="timestamps"):
        det.score(X, t[:-1])


@pytest.mark.parametrize("name", ALL)
def test_many_series_are_scored_in_one_batch_like_one_at_a_time(name):
    # A pooled model (one model learned from all series of the batch) depends on the peers by
    # design (Detector.pools_series); tests/test_ml_detectors.py checks its per-series invariances.
    if available()[name].pools_series:
        pytest.skip("pools_series: a series' score depends on its peers by design")
    X, t = noise(n_series=6)
    Xh, th, Xn, tn = split(X, t, 300)
    together = make(name).fit(Xh, th).score(Xn, tn).score
    alone = np.vstack([make(name).fit(Xh[i : i + 1], th).score(Xn[i : i + 1], tn).score for i in range(6)])
    np.testing.assert_allclose(together, alone)


# -- the shared score semantics ---------------------------------------------------------
def test_band_score_is_piecewise_linear_and_asymmetric():
    x = np.array([10.0, 12.0, 14.0, 8.0, 9.0, 20.0])
    s = band_score(x, np.full(6, 10.0), np.full(6, 9.0), np.full(6, 14.0))
    np.testing.assert_allclose(s, [0, 0.5, 1, 2, 1, 2.5])


def test_band_score_with_zero_width_is_large_but_finite():
    s = band_score(np.array([1.0, 1.0001]), np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert s[0] == 0 and 1e3 < s[1] < np.inf


def test_band_score_with_an_open_side_never_fires_on_that_side():
    s = band_score(np.array([-1e9, 7.0]), np.array([1.0, 1.0]), np.array([-np.inf, -np.inf]), np.array([4.0, 4.0]))
    np.testing.assert_allclose(s, [0.0, 2.0])


# -- behaviour of the statistical family --------------------------------------------------
STATISTICAL = [n for n in ALL if available()[n].family == "statistical" and n not in ("static_threshold", "seasonal")]


def seasonal_series(n_series=4, n_time=3 * 1440 + 600, seed=1, step=STEP):
    """Three days and a bit of a daily cycle with noise, one-minute steps."""
    rng = np.random.default_rng(seed)
    t = step * np.arange(n_time) + 1.7e9
    day = 10 + 5 * np.sin(2 * np.pi * t / 86400)
    return day + rng.normal(0, 0.5, (n_series, n_time)), t


@pytest.mark.parametrize("name", STATISTICAL)
def test_clean_gaussian_noise_stays_below_1_at_under_half_a_percent(name):
    X, t = noise(n_series=50, n_time=1200, seed=4)
    Xh, th, Xn, tn = split(X, t, 600)
    s = make(name).fit(Xh, th).score(Xn, tn)
    assert np.mean(s.score >= 1) < 0.005


@pytest.mark.parametrize("name", STATISTICAL)
@pytest.mark.parametrize("change", [+8.0, -8.0])
def test_level_shifts_up_and_down_are_detected(name, change):
    X, t = noise(seed=5)
    Xh, th, Xn, tn = split(X, t, 300)
    Xn = Xn.copy()
    Xn[0, 20:] += change
    s = make(name).fit(Xh, th).score(Xn, tn)
    assert np.all(s.score[0, 20:30] > 1)


@pytest.mark.parametrize("name", STATISTICAL)
def test_a_traffic_drop_to_zero_is_detected(name):
    rng = np.random.default_rng(6)
    t = STEP * np.arange(400) + 1.7e9
    X = 100 + rng.normal(0, 5, (3, 400))
    X[1, 350:] = 0.0
    s = make(name).fit(X[:, :300], t[:300]).score(X[:, 300:], t[300:])
    assert np.all(s.score[1, 50:60] > 1)
    assert np.mean(s.score[[0, 2], 50:] >= 1) < 0.02


@pytest.mark.parametrize("name", STATISTICAL)
def test_past_spikes_in_the_history_do_not_blind_robust_detectors(name):
    X, t = noise(seed=7)
    X[0, 50:53] = 40.0  # an old incident inside the history
    Xh, th, Xn, tn = split(X, t, 300)
    Xn = Xn.copy()
    Xn[0, 10] = 8.0
    s = make(name).fit(Xh, th).score(Xn, tn)
    if name == "zscore":  # the mean/std detector is the one that gets blinded: documented trade-off
        assert s.score[0, 10] < s.score[1:, 10].max() + 10
    else:
        assert s.score[0, 10] > 1


def test_mostly_zero_error_counts_still_see_a_burst():
    """MAD is 0 when more than half the points are equal; the fallback spread keeps a band."""
    rng = np.random.default_rng(8)
    t = STEP * np.arange(400) + 1.7e9
    X = np.where(rng.random((1, 400)) < 0.1, rng.integers(1, 3, (1, 400)), 0).astype(float)
    det = make("robust_zscore").fit(X[:, :300], t[:300])
    quiet = det.score(X[:, 300:], t[300:])
    assert np.mean(quiet.score >= 1) < 0.1
    burst = det.score(np.full((1, 5), 30.0), t[300:305])
    assert np.all(burst.score > 1)


def test_quantile_band_is_asymmetric_for_skewed_latency():
    rng = np.random.default_rng(9)
    t = STEP * np.arange(600) + 1.7e9
    X = rng.lognormal(np.log(0.2), 0.4, (1, 600))
    det = make("quantile").fit(X, t)
    assert det.upper_[0] - det.expected_[0] > det.expected_[0] - det.lower_[0]


def test_ewma_follows_a_slow_drift_but_flags_a_jump():
    t = STEP * np.arange(800) + 1.7e9
    rng = np.random.default_rng(10)
    X = (np.linspace(10, 20, 800) + rng.normal(0, 0.2, 800))[None, :]
    det = make("ewma", halflife="10m").fit(X[:, :600], t[:600])
    s = det.score(X[:, 600:], t[600:])
    assert np.mean(s.score >= 1) < 0.02
    jumped = X[:, 600:].copy()
    jumped[0, 100:] += 5
    assert np.all(det.score(jumped, t[600:]).score[0, 100:103] > 1)


def test_seasonal_expects_the_same_time_of_day_and_flags_a_break_from_it():
    X, t = seasonal_series()
    cut = 3 * 1440
    det = make("seasonal", period="1d", bins=288).fit(X[:, :cut], t[:cut])
    s = det.score(X[:, cut:], t[cut:])
    assert np.mean(s.score >= 1) < 0.01
    np.testing.assert_allclose(s.expected, 10 + 5 * np.sin(2 * np.pi * t[cut:] / 86400)[None, :].repeat(4, 0), atol=0.6)
    # The value of the trough at the time of the peak is normal for the day overall, not for the hour.
    broken = X[:, cut:].copy()
    broken[0, 300:320] = X[0, cut - 1440 + 300 + 720 : cut - 1440 + 320 + 720]
    assert np.mean(det.score(broken, t[cut:]).score[0, 300:320] > 1) > 0.5


def test_seasonal_needs_min_periods_of_history():
    X, t = seasonal_series(n_time=1440 + 100)
    det = make("seasonal", period="1d", bins=288, min_periods=2).fit(X, t)
    assert not det.ready_.any()


def test_static_threshold_scores_the_budget_used():
    t = STEP * np.arange(10) + 1.7e9
    det = make("static_threshold", min=None, max=0.5).fit(np.full((1, 10), 0.1), t)
    s = det.score(np.array([[0.1, 0.3, 0.5, 0.9, -5.0]]), t[:5])
    np.testing.assert_allclose(s.score[0], [0, 0.5, 1, 2, 0])


@pytest.mark.parametrize(
    "spec, param",
    [
        ({"type": "quantile", "q_low": 0.8, "q_high": 0.2}, "q_high"),
        ({"type": "ewma", "halflife": "0s"}, "halflife"),
        ({"type": "seasonal", "bins": 0}, "bins"),
        ({"type": "static_threshold", "min": 5, "max": 1}, "max"),
        ({"type": "robust_zscore", "min_band": -1}, "min_band"),
        ({"type": "zscore", "min_history": 2.5}, "min_history"),
    ],
)
def test_bad_parameter_values_name_the_parameter(spec, param):
    from sidecar.detectors import DetectorSpecError

    with pytest.raises(DetectorSpecError) as err:
        build(spec)
    assert err.value.path == (param,)


def test_plugins_register_through_the_entry_point_group(monkeypatch):
    import importlib.metadata as md

    from sidecar.detectors import registry

    class Plugin(Detector):
        name = "test_plugin_detector"

        def __init__(self, *, min_history: int = 1):
            self.min_history = min_history

        def _fit(self, X, t):
            self.center_ = np.nanmean(X, axis=1)

        def _band(self, X, t):
            c = np.broadcast_to(self.center_[:, None], X.shape)
            return c, c - 1, c + 1

    class EP:
        name = "test_plugin_detector"
        value = "x:Plugin"

        def load(self):
            return Plugin

    class Broken(EP):
        name = "broken_plugin"

        def load(self):
            raise ImportError("no module named broken")

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [EP(), Broken()] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "test_plugin_detector" in registry.available()
    det = build("test_plugin_detector")
    s = det.fit(np.zeros((1, 5)), np.arange(5.0)).score(np.array([[2.0]]), np.array([5.0]))
    assert s.score[0, 0] == 2.0
    assert md  # the real entry_points function is what the registry uses outside this test
