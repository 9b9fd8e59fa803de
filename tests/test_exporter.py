"""The exporter: snapshot rendering, self-monitoring, HTTP endpoints, promtool's lint."""

from __future__ import annotations

import gzip
import subprocess

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from servers import require_binary
from sidecar.exporter import Exporter, SelfCollector, render_scores
from sidecar.snapshot import QueryView, SnapshotStore, format_values, label_text, published_labels, render_chunks
from sidecar.telemetry import Telemetry


def view(name, series, **kw):
    """A finished view with ``series``: list of (labels, [score, value, expected, lower, upper])."""
    labels = [label_text(published_labels(lbl, name, "robust_zscore")) for lbl, _ in series]
    outputs = np.array([out for _, out in series], dtype=float).T.reshape(5, len(series))
    interval = kw.pop("interval", 30.0)
    return QueryView(name, "up", "robust_zscore", interval, chunks=render_chunks(labels, outputs), series_published=len(series), **kw)


SERIES = [
    ({"__name__": "x", "model": 'we"ird\\name\n', "pod": "p1"}, [1.5, 10.0, 5.0, 4.0, 6.0]),
    ({"model": "b", "query": "theirs"}, [0.1, 5.1, 5.0, -np.inf, np.inf]),
]


@pytest.fixture
def store():
    s = SnapshotStore([QueryView("latency", "up", "robust_zscore", 30.0), QueryView("errors", "up", "zscore", 60.0)])
    return s


def parse(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_rendered_scores_parse_back_to_the_published_values(store):
    store.publish(view("latency", SERIES, last_run=1.0, success=True))
    families = parse(render_scores(store.current()).decode())
    assert set(families) == {"anomaly_score", "anomaly_value", "anomaly_expected", "anomaly_lower", "anomaly_upper"}
    samples = {s.labels["model"]: s for s in families["anomaly_score"].samples}
    assert samples['we"ird\\name\n'].value == 1.5
    assert samples['we"ird\\name\n'].labels == {"model": 'we"ird\\name\n', "pod": "p1", "query": "latency", "detector": "robust_zscore"}
    assert samples["b"].labels["exported_query"] == "theirs" and samples["b"].labels["query"] == "latency"
    lower = {s.labels["model"]: s.value for s in families["anomaly_lower"].samples}
    assert lower["b"] == -np.inf


def test_each_family_is_contiguous_across_queries(store):
    store.publish(view("latency", SERIES))
    store.publish(view("errors", SERIES[:1]))
    names = [line.split("{")[0] for line in render_scores(store.current()).decode().splitlines() if not line.startswith("#")]
    assert len(names) == 15
    assert names == sorted(names, key=["anomaly_score", "anomaly_value", "anomaly_expected", "anomaly_lower", "anomaly_upper"].index)


def test_format_values_uses_the_text_format_spellings():
    assert format_values(np.array([0.5, np.nan, np.inf, -np.inf, 1e-300])) == ["0.5", "NaN", "+Inf", "-Inf", "1e-300"]


def test_self_collector_reports_each_query_of_the_snapshot(store):
    registry = CollectorRegistry()
    registry.register(SelfCollector(store))
    assert registry.get_sample_value("anomaly_sidecar_build_info", {"version": __import__("sidecar").__version__}) == 1
    assert registry.get_sample_value("anomaly_sidecar_query_success", {"query": "latency"}) is None  # not run yet
    store.publish(view("latency", SERIES, last_run=100.0, last_success=100.0, success=True, series_scored=2, series_not_ready=3))
    store.publish(view("errors", [], interval=60.0, step=120.0, last_run=101.0, success=False, error="boom", error_reason="connection"))
    g = registry.get_sample_value
    assert g("anomaly_sidecar_series_scored", {"query": "latency"}) == 2
    assert g("anomaly_sidecar_series_not_ready", {"query": "latency"}) == 3
    assert g("anomaly_sidecar_series_published", {"query": "latency"}) == 2
    assert g("anomaly_sidecar_query_success", {"query": "latency"}) == 1
    assert g("anomaly_sidecar_query_success", {"query": "errors"}) == 0
    assert g("anomaly_sidecar_last_success_timestamp_seconds", {"query": "latency"}) == 100
    assert g("anomaly_sidecar_last_success_timestamp_seconds", {"query": "errors"}) is None
    assert g("anomaly_sidecar_query_interval_seconds", {"query": "errors"}) == 60
    assert g("anomaly_sidecar_query_step_seconds", {"query": "errors"}) == 120


@pytest.fixture
def exporter(store):
    registry = CollectorRegistry()
    Telemetry(registry).init_query("latency")
    registry.register(SelfCollector(store))
    exp = Exporter(store, registry, "127.0.0.1:0").start()
    yield exp, f"http://{exp.address}"
    exp.stop()


def test_ready_only_after_every_query_finished_a_first_cycle(store, exporter):
    _, url = exporter
    assert requests.get(f"{url}/-/healthy", timeout=5).status_code == 200
    assert requests.get(f"{url}/-/ready", timeout=5).status_code == 503
    store.publish(view("latency", SERIES, last_run=1.0, success=True))
    assert requests.get(f"{url}/-/ready", timeout=5).status_code == 503
    store.publish(view("errors", [], last_run=1.0, success=False, error="down", error_reason="connection"))
    assert requests.get(f"{url}/-/ready", timeout=5).status_code == 200


def test_metrics_endpoint_serves_scores_and_self_metrics_gzip_or_plain(store, exporter):
    _, url = exporter
    store.publish(view("latency", SERIES, last_run=1.0, success=True))
    plain = requests.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    raw = requests.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
    assert raw.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw.raw.read()).decode() == plain.text
    families = parse(plain.text)
    assert "anomaly_sidecar_cycle_duration_seconds" in families and "anomaly_score" in families
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_a_scrape_reuses_the_rendering_until_the_snapshot_changes(store, exporter):
    exp, _ = exporter
    store.publish(view("latency", SERIES))
    first = exp.scores_text()
    assert exp.scores_text() is first
    store.publish(view("latency", SERIES[:1]))
    assert exp.scores_text() is not first and exp.scores_text().count(b"\nanomaly_score{") == 1


def test_landing_page_lists_queries_with_status_and_counts(store, exporter):
    _, url = exporter
    store.publish(view("latency", SERIES, last_run=1e9, success=True, series_returned=7, series_scored=5, series_not_ready=2))
    store.publish(view("errors", [], last_run=1e9, success=False, error="cannot connect <b>", error_reason="connection"))
    page = requests.get(url + "/", timeout=5).text
    assert "<td><b>latency</b>" in page and "<td>7</td><td>5</td><td>2</td>" in page
    assert "error (connection): cannot connect &lt;b&gt;" in page
    assert 'href="/metrics"' in page


def test_promtool_finds_nothing_to_complain_about(store, exporter):
    _, url = exporter
    store.publish(view("latency", SERIES, last_run=1.0, last_success=1.0, success=True))
    body = requests.get(f"{url}/metrics", timeout=5).text
    out = subprocess.run([require_binary("promtool"), "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


def test_listening_on_a_taken_port_fails_cleanly(store):
    first = Exporter(store, CollectorRegistry(), "127.0.0.1:0").start()
    try:
        with pytest.raises(OSError):
            Exporter(store, CollectorRegistry(), first.address).start()
    finally:
        first.stop()
