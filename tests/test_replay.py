"""Causal replay: the stacked fast path equals the plain refit loop, and never sees the future."""

import numpy as np
import pytest

from sidecar.detectors import available, build
from sidecar.replay import _empty, _replay_loop, boundaries, replay

# Detectors that take the stacked path: their equality with the loop is what is tested.
FAST = sorted(n for n, c in available().items() if c.time_invariant and not c.pools_series)


def series(n_series=2, n=900, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n_series, n))
    X[:, min(500, n - 1)] += 15
    X[0, 100:140] = np.nan
    return X, 300.0 * np.arange(n) + 1.6e9


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("refit_every", [1, 7])
def test_stacked_replay_equals_the_refit_loop(name, refit_every):
    X, t = series()
    det = build({"type": name, "max": 4} if name == "static_threshold" else name)
    fast = replay(det, X, t, history=200, refit_every=refit_every)
    slow = _empty(X.shape)
    _replay_loop(det, X, t, 200, refit_every, boundaries(X.shape[1], refit_every, det.min_history), slow)
    for a, b in ((fast.score, slow.score), (fast.expected, slow.expected), (fast.upper, slow.upper)):
        np.testing.assert_allclose(a, b, equal_nan=True)


@pytest.mark.parametrize("name", sorted(available()))
def test_replay_is_causal(name):
    X, t = series(n_series=1)
    spec = {"type": name, "max": 4} if name == "static_threshold" else ({"type": name, "period": "1h", "bins": 12} if name == "seasonal" else name)
    det = build(spec)
    # Pooled models refit through the loop: fewer refits keep the test quick, causality is the same.
    refit = 60 if det.pools_series else 5
    a = replay(det, X, t, history=120, refit_every=refit)
    changed = X.copy()
    changed[:, 600:] = 1000.0
    b = replay(det, changed, t, history=120, refit_every=refit)
    np.testing.assert_array_equal(a.score[:, :600], b.score[:, :600])


def test_points_before_min_history_are_not_scored_and_the_spike_is():
    X, t = series(n_series=1)
    s = replay(build("robust_zscore"), X, t, history=200, refit_every=1)
    assert np.isnan(s.score[0, :30]).all()
    assert s.score[0, 500] > 1


def test_irregular_grids_take_the_loop_and_give_the_same_answer():
    X, t = series(n_series=1, n=300)
    t_irregular = t.copy()
    t_irregular[150:] += 7.0  # one late point shifts the grid
    det = build("zscore")
    np.testing.assert_allclose(
        replay(det, X, t_irregular, history=100, refit_every=3).score,
        replay(det, X, t, history=100, refit_every=3).score,
        equal_nan=True,
    )


def test_bad_replay_arguments_are_rejected():
    X, t = series(n_series=1, n=50)
    with pytest.raises(ValueError):
        replay(build("zscore"), X, t, history=0)
