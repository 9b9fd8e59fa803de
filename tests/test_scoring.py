"""The scoring cycle against a real Prometheus holding history the test wrote."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import STEP
from prometheus_client import CollectorRegistry
from servers import free_port

from sidecar.config import parse_config
from sidecar.detectors import DEFAULT_DETECTOR
from sidecar.prometheus import PrometheusClient
from sidecar.scoring import QueryRunner, counter_rates
from sidecar.telemetry import Telemetry


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingClient(PrometheusClient):
    """The real client, recording the windows it asks for (and optionally hiding series)."""

    def __init__(self, settings, hide=lambda labels: False):
        super().__init__(settings)
        self.windows = []
        self.hide = hide

    def query_range(self, expr, start, end, step):
        self.windows.append((start, end))
        result = super().query_range(expr, start, end, step)
        keep = [i for i, lbl in enumerate(result.labels) if not self.hide(lbl)]
        return type(result)(result.timestamps, [result.labels[i] for i in keep], result.values[keep])


def runner_for(hist, clock=None, client_cls=PrometheusClient, registry=None, **query):
    cfg = parse_config({"prometheus": {"url": hist.prometheus.url, "retries": 0, "timeout": "5s"}, "queries": [{"name": "q", "expr": "model_latency_seconds", "interval": "15s", "step": "15s", "history": "1h", **query}]})
    client = client_cls(cfg.prometheus)
    telemetry = Telemetry(registry) if registry is not None else None
    return QueryRunner(cfg.queries[0], client, telemetry=telemetry, clock=clock or Clock(hist.end))


def by_model(runner):
    return {labels["model"]: out for labels, out in runner.published()}


def test_every_series_is_scored_and_only_the_injected_anomaly_reaches_1(history):
    runner = runner_for(history)
    view = runner.run()
    assert view.success and view.series_returned == 4 and view.series_scored == 4 and view.series_not_ready == 0
    scores = {m: out[0] for m, out in by_model(runner).items()}
    assert scores["m4"] >= 1
    assert max(scores["m1"], scores["m2"], scores["m3"]) < 1
    score, value, expected, lower, upper = by_model(runner)["m4"]
    assert value == pytest.approx(0.8) and expected == pytest.approx(0.2, abs=0.01) and lower < expected < upper


def test_published_labels_are_the_source_labels_plus_query_and_detector(history):
    runner = runner_for(history)
    view = runner.run()
    lines = view.chunks[0].decode().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(
        f'anomaly_score{{detector="{DEFAULT_DETECTOR}",instance="10.0.0.1:8000",job="model-server",model="m1",namespace="serving",pod="model-0",query="q"}} '
    )


def test_the_second_cycle_fetches_only_new_steps_and_reuses_the_buffer(history):
    clock = Clock(history.end)
    runner = runner_for(history, clock=clock, client_cls=RecordingClient, refit_interval="0s")
    runner.run()
    clock.now += 45
    runner.run()
    (s1, e1), (s2, e2) = runner.client.windows
    # The window: an hour of history for the fit, plus the points one cycle scores.
    assert runner.buffer.capacity == 240 + 2
    assert e1 - s1 == pytest.approx((runner.buffer.capacity - 1) * STEP)
    assert e2 - e1 == pytest.approx(45)
    assert s2 == pytest.approx(e1 - 2 * STEP)  # two steps of overlap for late samples


def test_refit_interval_keeps_the_fit_between_refits(history):
    clock = Clock(history.end)
    runner = runner_for(history, clock=clock, refit_interval="10m")
    runner.run()
    first = runner.full_fits
    clock.now += 30
    runner.run()
    assert runner.full_fits is first
    clock.now += 600
    runner.run()
    assert runner.full_fits is not first
    assert runner.view.series_scored == 4


@pytest.mark.parametrize("min_history, scored", [(3, 4), (30, 3)])
def test_new_series_between_refits_get_a_catch_up_fit_once_they_have_history(history, min_history, scored):
    """A series that appears later (a new pod) has only the points since it appeared."""
    clock = Clock(history.end - 600)
    hidden = {"on": True}
    runner = runner_for(
        history,
        clock=clock,
        client_cls=lambda s: RecordingClient(s, hide=lambda l: hidden["on"] and l.get("model") == "m2"),
        refit_interval="1h",
        detector={"type": "robust_zscore", "min_history": min_history},
    )
    first_fit = runner.run() and runner.full_fits
    assert runner.view.series_scored == 3
    hidden["on"] = False
    clock.now += 30
    view = runner.run()
    assert runner.full_fits is first_fit and [f.rows.size for f in runner.catchup] == [1]
    assert view.series_scored == scored and view.series_not_ready == 4 - scored


def test_a_raw_counter_is_turned_into_a_rate_and_its_reset_does_not_page(history):
    runner = runner_for(history, expr="model_requests_total", history="2h")
    view = runner.run()
    ((labels, (score, value, *_)),) = runner.published()
    assert view.success and labels == {"job": "model-server", "namespace": "serving", "pod": "model-0", "model": "m1", "status": "200"}
    assert value == pytest.approx(10, abs=3)  # per second, not the raw count
    assert score < 1


def test_counter_rates_treat_a_decrease_as_a_reset():
    X = np.array([[0.0, 10, 20, 5, 15, np.nan, 25]])
    np.testing.assert_allclose(counter_rates(X, 5.0), [[np.nan, 2, 2, 1, 2, np.nan, np.nan]])


def test_series_with_a_gap_are_still_scored(history):
    runner = runner_for(history, expr="model_gpu_utilization", history="2h")
    view = runner.run()
    assert view.series_scored == 1 and runner.published()[0][1][0] < 1


@pytest.mark.parametrize(
    "query, reason",
    [
        ({"expr": "sum(rate(x[1m])"}, "bad_data"),
        ({"expr": '{__name__=~"dup_.*"}'}, "duplicate_series"),
        ({"max_series": 2}, "too_many_series"),
    ],
)
def test_a_bad_query_fails_with_a_reason_and_is_counted(history, query, reason):
    registry = CollectorRegistry()
    runner = runner_for(history, registry=registry, **query)
    view = runner.run()
    assert view.success is False and view.error_reason == reason
    assert registry.get_sample_value("anomaly_sidecar_query_errors_total", {"query": "q", "reason": reason}) == 1
    assert registry.get_sample_value("anomaly_sidecar_query_errors_total", {"query": "q", "reason": "connection"}) == 0


def test_a_query_with_no_series_is_a_success_with_zero_series(history):
    view = runner_for(history, expr="no_such_metric").run()
    assert view.success and view.series_returned == 0 and view.chunks[0] == b""


def test_short_history_means_not_ready_and_no_published_score(history):
    # Only the last 5 minutes exist for this window: 20 points < min_history 30.
    runner = runner_for(history, expr="model_latency_seconds", history="5m")
    view = runner.run()
    assert view.success and view.series_not_ready == 4 and view.series_scored == 0 and view.series_published == 0


def test_scores_outlive_a_failing_prometheus_only_for_series_ttl(history, caplog):
    caplog.set_level(logging.INFO)  # whatever an earlier in-process CLI run set the level to
    clock = Clock(history.end)
    runner = runner_for(history, clock=clock, series_ttl="1m", registry=CollectorRegistry())
    assert runner.run().series_published == 4
    runner.client.settings = runner.client.settings.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})
    clock.now += 15
    view = runner.run()
    assert view.success is False and view.error_reason == "connection" and view.series_published == 4
    for _ in range(4):
        clock.now += 15
        view = runner.run()
    assert view.series_published == 0 and view.chunks[0] == b""
    # The same failure was logged once, not once per cycle.
    failures = [r for r in caplog.records if r.getMessage() == "query failed" and r.levelname == "WARNING"]
    assert len(failures) == 1


def test_a_cycle_with_no_new_step_keeps_the_last_status_without_asking_prometheus(history):
    clock = Clock((history.end // 15) * 15 + 0.5)
    runner = runner_for(history, clock=clock, client_cls=RecordingClient, interval="5s", step="15s")
    assert runner.run().success is True
    runner.client.settings = runner.client.settings.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})
    clock.now += 5  # same 15 s step: nothing new to fetch, the last (good) status stands
    assert runner.run().success is True and len(runner.client.windows) == 1
    clock.now += 10  # next step: the fetch fails
    assert runner.run().success is False and len(runner.client.windows) == 2
    clock.now += 5  # same step again: the failed fetch is retried, and the status says failed
    view = runner.run()
    assert view.success is False and view.error_reason == "connection" and len(runner.client.windows) == 3


def test_scoring_resumes_when_prometheus_answers_again(history):
    clock = Clock(history.end)
    runner = runner_for(history, clock=clock)
    good = runner.client.settings
    runner.client.settings = good.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})
    assert runner.run().success is False
    runner.client.settings = good
    clock.now += 15
    view = runner.run()
    assert view.success and view.series_scored == 4 and view.last_success is not None


def test_source_labels_named_query_or_detector_are_kept_as_exported(history):
    runner = runner_for(history, expr='label_replace(model_latency_seconds{model="m1"}, "query", "theirs", "", "")')
    view = runner.run()
    assert b'exported_query="theirs"' in view.chunks[0] and b'query="q"' in view.chunks[0]


def test_many_series_are_fitted_in_chunks_with_the_same_scores(history, monkeypatch):
    import sidecar.scoring as scoring

    whole = runner_for(history)
    whole.run()
    monkeypatch.setattr(scoring, "FIT_CHUNK_CELLS", 1)  # one series per chunk
    monkeypatch.setattr(scoring, "MIN_FIT_CHUNK", 1)
    chunked = runner_for(history)
    chunked.run()
    assert len(chunked.full_fits) == 4 and len(whole.full_fits) == 1
    np.testing.assert_array_equal(chunked.outputs, whole.outputs)


def test_every_detector_runs_through_the_cycle(history):
    from sidecar.detectors import available

    for name in available():
        spec = {"type": name, "max": 1.0} if name == "static_threshold" else ({"type": name, "period": "10m", "bins": 10} if name == "seasonal" else name)
        view = runner_for(history, detector=spec).run()
        assert view.success and view.series_scored == 4, (name, view.error)


@pytest.mark.parametrize(
    "settings, requests",
    [
        ({"max_points_per_query": 50}, 10),  # 481 points at 50 per series: 10 requests
        ({"max_samples_per_request": 1000}, 4),  # 64 points to count 6 series, then 166 at a time
    ],
)
def test_long_ranges_are_read_in_bounded_requests_that_add_up_to_one_read(history, settings, requests):
    class Counting(PrometheusClient):
        requests = 0

        def _request(self, endpoint, params):
            type(self).requests += 1
            return super()._request(endpoint, params)

    base = parse_config({"prometheus": {"url": history.prometheus.url}, "queries": [{"name": "q", "expr": "up"}]}).prometheus
    whole = PrometheusClient(base).query_range('{__name__=~"model_.*"}', history.end - 7200, history.end, 15)
    split = Counting(base.model_copy(update=settings)).query_range('{__name__=~"model_.*"}', history.end - 7200, history.end, 15)
    assert Counting.requests == requests
    order = {tuple(sorted(lbl.items())): i for i, lbl in enumerate(split.labels)}
    rows = [order[tuple(sorted(lbl.items()))] for lbl in whole.labels]
    assert len(rows) == whole.n_series == 6
    np.testing.assert_array_equal(split.timestamps, whole.timestamps)
    np.testing.assert_array_equal(split.values[rows], whole.values)
