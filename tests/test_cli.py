"""The command line, run as a user runs it, against a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from servers import free_port
from sidecar.detectors import DEFAULT_DETECTOR, available


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=timeout)


def config(tmp_path, url, queries=None):
    p = tmp_path / "c.yaml"
    queries = queries or [
        {"name": "latency", "expr": "model_latency_seconds"},
        {"name": "broken", "expr": "rate(model_latency_seconds[1m]"},
    ]
    p.write_text(yaml.safe_dump({"prometheus": {"url": url, "retries": 0}, "defaults": {"step": "15s", "history": "1h"}, "queries": queries}))
    return p


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"anomaly-sidecar {__import__('sidecar').__version__}"


def test_detectors_lists_every_detector_with_parameters_and_the_default():
    out = cli("detectors")
    assert out.returncode == 0
    for name, cls in available().items():
        assert name in out.stdout
        for param in cls.param_names():
            assert f"    {param} = " in out.stdout
    assert f"{DEFAULT_DETECTOR} (default)" in out.stdout


def test_score_prints_a_table_and_exits_1_when_a_query_failed(tmp_path, history):
    out = cli("score", "--config", str(config(tmp_path, history.prometheus.url)))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["query", "series", "value", "expected", "lower", "upper", "score"]
    assert 'model="m4"' in lines[1] and lines[1].rstrip().endswith("ANOMALOUS")  # sorted by score
    assert sum("ANOMALOUS" in line for line in lines) == 1
    assert "latency: ok, 4 series returned, 4 scored, 0 not ready" in out.stdout
    assert "broken: FAILED (bad_data): Prometheus rejected the expression" in out.stdout


def test_score_json_and_exit_0_when_every_query_ran(tmp_path, history):
    cfg = config(tmp_path, history.prometheus.url, [{"name": "latency", "expr": "model_latency_seconds"}])
    out = cli("score", "--config", str(cfg), "--format", "json")
    assert out.returncode == 0, out.stderr
    (q,) = json.loads(out.stdout)["queries"]
    assert q["success"] and q["series_scored"] == 4
    scores = {s["labels"]["model"]: s["score"] for s in q["series"]}
    assert scores["m4"] >= 1 and max(scores[m] for m in ("m1", "m2", "m3")) < 1


def test_score_with_prometheus_down_reports_the_connection_error(tmp_path):
    out = cli("score", "--config", str(config(tmp_path, "http://127.0.0.1:1")), "--prometheus-url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "latency: FAILED (connection): cannot connect" in out.stdout


def test_check_config_asks_prometheus_to_parse_each_expression(tmp_path, history):
    out = cli("check-config", str(config(tmp_path, history.prometheus.url)))
    assert out.returncode == 2
    assert "queries[1].expr: Prometheus rejected the expression" in out.stderr
    good = config(tmp_path, history.prometheus.url, [{"name": "ok", "expr": "sum by (model) (rate(model_latency_seconds[5m]))"}])
    out = cli("check-config", str(good))
    assert out.returncode == 0 and "expressions OK" in out.stdout


def test_check_config_rejects_a_range_vector_as_a_range_query(tmp_path, history):
    out = cli("check-config", str(config(tmp_path, history.prometheus.url, [{"name": "rv", "expr": "model_latency_seconds[5m]"}])))
    assert out.returncode == 2 and "queries[0].expr" in out.stderr and "range vector" in out.stderr


def test_check_config_without_prometheus_still_validates_the_file(tmp_path):
    out = cli("check-config", str(config(tmp_path, f"http://127.0.0.1:{free_port()}")))
    assert out.returncode == 0 and "config OK, 2 queries" in out.stdout and "expressions not checked" in out.stdout


@pytest.mark.parametrize("args", [[], ["run"], ["score"], ["nope"], ["run", "--config", "x", "--log-format", "xml"]])
def test_usage_errors_exit_2(args):
    assert cli(*args).returncode == 2


def test_run_on_a_taken_port_exits_1_with_a_message(tmp_path, history):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = cli("run", "--config", str(config(tmp_path, history.prometheus.url)), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1 and 'msg="cannot listen"' in out.stderr
