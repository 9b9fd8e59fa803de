"""End to end: a real Prometheus, the sidecar as a process, Prometheus scraping the sidecar.

Results are checked through Prometheus' own query API, the way Grafana and alert rules see them.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import model_history
from prometheus_client.parser import text_string_to_metric_families
from servers import Process, Prometheus, free_port, sidecar_command, wait_until

from sidecar.detectors import DEFAULT_DETECTOR

pytestmark = pytest.mark.integration


def sidecar_config(path: Path, prometheus_url: str, **defaults) -> Path:
    cfg = {
        "prometheus": {"url": prometheus_url, "timeout": "5s", "retries": 0},
        "defaults": {"interval": "2s", "step": "5s", "history": "1h", "series_ttl": "10s", **defaults},
        "queries": [
            {"name": "latency", "expr": "model_latency_seconds"},
            {"name": "throughput", "expr": "sum by (model) (rate(model_requests_total[1m]))", "detector": {"type": "ewma", "halflife": "10m"}},
            {"name": "broken", "expr": "sum(rate(model_latency_seconds[1m])"},
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_sidecar(tmp_path: Path, config: Path, port: int) -> Process:
    return Process(
        "sidecar",
        sidecar_command("run", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--log-format", "json"),
        tmp_path / "sidecar.log",
    ).start()


def sidecar_metrics(port: int) -> dict[tuple[str, frozenset], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def metric(samples, name, **labels):
    return [v for (n, lbl), v in samples.items() if n == name and all((k, v2) in lbl for k, v2 in labels.items())]


def scrape_sidecar(port: int) -> list[dict]:
    return [{"job_name": "anomaly-sidecar", "honor_labels": True, "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]


def log_events(proc: Process) -> list[dict]:
    return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


@pytest.fixture
def stack(tmp_path):
    port = free_port()
    prom = Prometheus(tmp_path, scrape_configs=scrape_sidecar(port))
    prom.backfill(model_history(float(np.floor(time.time())) - 1))
    yield prom, port
    prom.stop()


def test_scores_reach_prometheus_with_source_labels_and_only_the_anomaly_is_above_1(tmp_path, stack):
    prom, port = stack
    prom.start()
    sidecar = start_sidecar(tmp_path, sidecar_config(tmp_path / "sidecar.yaml", prom.url), port)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200, 30, what="sidecar ready")
        scores = wait_until(lambda: len(prom.query('anomaly_score{query="latency"}')) == 4 and prom.query('anomaly_score{query="latency"}'), 30, what="scores in Prometheus")
        by_model = {s["metric"]["model"]: s for s in scores}
        m4 = by_model["m4"]["metric"]
        # honor_labels keeps the model server's job and instance, not the sidecar's.
        assert m4 == {
            "__name__": "anomaly_score", "job": "model-server", "instance": "10.0.0.1:8000", "namespace": "serving",
            "pod": "model-0", "model": "m4", "query": "latency", "detector": DEFAULT_DETECTOR,
        }
        assert float(by_model["m4"]["value"][1]) >= 1
        assert all(float(by_model[m]["value"][1]) < 1 for m in ("m1", "m2", "m3"))
        # The band around the expected value is published too, and contains normal values.
        band = prom.series_values('anomaly_upper{query="latency",model="m1"} > anomaly_value{query="latency",model="m1"} > anomaly_lower{query="latency",model="m1"}')
        assert len(band) == 1
        # The throughput query (a counter with a reset in its history) scores quietly too.
        throughput = prom.query('anomaly_score{query="throughput"}')
        assert len(throughput) == 1 and float(throughput[0]["value"][1]) < 1
        # Self-monitoring, scraped with the sidecar's own job; the broken query fails alone.
        scored = prom.series_values('anomaly_sidecar_series_scored{job="anomaly-sidecar"}')
        assert {dict(k)["query"]: v for k, v in scored.items()} == {"latency": 4, "throughput": 1, "broken": 0}
        errors = prom.series_values('anomaly_sidecar_query_errors_total{reason="bad_data"} > 0')
        assert [dict(k)["query"] for k in errors] == ["broken"]
        assert sidecar.alive()
    finally:
        code = sidecar.stop(signal.SIGTERM)
    assert code == 0, sidecar.log()[-3000:]
    assert any(e["msg"] == "stopped" for e in log_events(sidecar))


def test_sidecar_survives_prometheus_outages_and_recovers_by_itself(tmp_path, stack):
    prom, port = stack
    # Prometheus is down when the sidecar starts.
    sidecar = start_sidecar(tmp_path, sidecar_config(tmp_path / "sidecar.yaml", prom.url), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200, 30, what="ready after a failed first cycle")
        down = wait_until(lambda: (m := sidecar_metrics(port)) and metric(m, "anomaly_sidecar_query_errors_total", query="latency", reason="connection")[0] >= 2 and m, 30, what="errors counted")
        assert metric(down, "anomaly_sidecar_query_success", query="latency") == [0]
        assert requests.get(f"{url}/-/healthy", timeout=2).status_code == 200

        prom.start()
        wait_until(lambda: len(prom.query('anomaly_score{query="latency"}')) == 4, 30, what="scores after Prometheus came up")

        prom.stop()
        assert sidecar.alive()
        # While Prometheus is away, published scores stay for series_ttl (10s), then go.
        wait_until(lambda: not metric(sidecar_metrics(port), "anomaly_score"), 30, what="scores expired by TTL")
        gone = sidecar_metrics(port)
        assert metric(gone, "anomaly_sidecar_query_success", query="latency") == [0]
        assert metric(gone, "anomaly_sidecar_last_success_timestamp_seconds", query="latency")[0] > 0
        assert requests.get(f"{url}/-/healthy", timeout=2).status_code == 200

        prom.start()
        wait_until(lambda: metric(sidecar_metrics(port), "anomaly_sidecar_query_success", query="latency") == [1], 30, what="recovery")
        wait_until(lambda: len(metric(sidecar_metrics(port), "anomaly_score", query="latency")) == 4, 30, what="scores back")
    finally:
        code = sidecar.stop(signal.SIGTERM)
    assert code == 0
    events = [e for e in log_events(sidecar) if e.get("query") == "latency"]
    # Each distinct failure logged once (no flood), each recovery once.
    failed = [e for e in events if e["msg"] == "query failed"]
    recovered = [e for e in events if e["msg"] == "query recovered"]
    assert 1 <= len(failed) <= 3 and len(recovered) == 2, [e["msg"] for e in events]
