"""The docker compose stack's own configs, run for real without Docker.

No Docker engine runs here, so the compose services are started as local processes with the
configs compose mounts: the demo model server with the command compose gives it, Prometheus
with the scrape jobs and rule file of deploy/prometheus/prometheus.yml (service hosts pointed
at loopback ports), and the sidecar with deploy/compose/sidecar.yaml. Every query of that
config must succeed and return the demo's series: a wrong metric or label name in the demo
config would show up here as a query with no series.
"""

from __future__ import annotations

import copy
import re
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from deploy_assets import DEPLOY, PROMETHEUS_CONFIG, RULES_FILE, load_yaml
from servers import REPO, Process, Prometheus, free_port, sidecar_command, wait_until

pytestmark = pytest.mark.integration

COMPOSE = load_yaml(DEPLOY / "docker-compose.yml")
SIDECAR_CONFIG = DEPLOY / "compose" / "sidecar.yaml"


def compose_scrape_configs(ports: dict[str, int]) -> list[dict]:
    """deploy/prometheus/prometheus.yml's jobs, each `service:port` target moved to 127.0.0.1."""
    jobs = copy.deepcopy(load_yaml(PROMETHEUS_CONFIG)["scrape_configs"])
    for job in jobs:
        job["scrape_interval"] = "1s"
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{ports[t.split(':')[0]]}" for t in static["targets"]]
    return jobs


def test_the_compose_prometheus_and_sidecar_configs_find_the_demo_model_series_and_run_cleanly(tmp_path):
    model_port, sidecar_port = free_port(), free_port()
    entrypoint = COMPOSE["services"]["model"]["entrypoint"]
    assert entrypoint[:2] == ["python", "examples/demo/model_server.py"]
    model_args = [sys.executable, str(REPO / entrypoint[1]), *entrypoint[2:]]
    model_args[model_args.index("--host") + 1] = "127.0.0.1"
    model_args[model_args.index("--port") + 1] = str(model_port)
    # The image's WORKDIR /app holds examples/, as the repository root does.
    model = Process("model", model_args, tmp_path / "model.log").start()
    prom = Prometheus(tmp_path)
    sidecar = None
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{model_port}/metrics", timeout=2).ok, 60, what=f"demo model server\n{model.log()[-2000:]}")
        ports = {"sidecar": sidecar_port, "model": model_port, "localhost": prom.port}
        prom.scrape_configs = compose_scrape_configs(ports)
        prom.rule_files = [str(RULES_FILE)]
        prom.start()
        # A few scrapes of the demo's traffic, so that rate() windows have two samples.
        wait_until(lambda: prom.query('count(rate(model_requests_total{job="model-server"}[1m]) > 0) >= 2'), 30, what="demo traffic in Prometheus")
        # Every expression of the compose sidecar config finds the demo's series (a wrong metric
        # or label name would return nothing), for both demo models.
        queries = load_yaml(SIDECAR_CONFIG)["queries"]
        for q in queries:
            series = prom.query(q["expr"])
            assert series, f"query {q['name']} of {SIDECAR_CONFIG.name} returns no series from the demo model server"
            if re.search(r"by \([^)]*\bmodel\b", q["expr"]):
                assert {s["metric"].get("model") for s in series} == {"fraud-v3", "churn-v1"}, (q["name"], series)
            assert all(s["metric"].get("namespace") == "demo" and s["metric"].get("pod") == "demo-model-0" for s in series), series

        sidecar = Process(
            "sidecar",
            sidecar_command("run", "--config", str(SIDECAR_CONFIG), "--prometheus-url", prom.url, "--listen", f"127.0.0.1:{sidecar_port}"),
            tmp_path / "sidecar.log",
        ).start()
        wait_until(lambda: requests.get(f"http://127.0.0.1:{sidecar_port}/-/ready", timeout=2).status_code == 200, 60, what=f"sidecar ready\n{sidecar.log()[-2000:]}")
        text = requests.get(f"http://127.0.0.1:{sidecar_port}/metrics", timeout=5).text
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        success = {s.labels["query"]: s.value for s in samples if s.name == "anomaly_sidecar_query_success"}
        assert success == {q["name"]: 1.0 for q in queries}, sidecar.log()[-2000:]
        errors = [s for s in samples if s.name == "anomaly_sidecar_query_errors_total" and s.value > 0]
        assert not errors, errors
        # The compose Prometheus scrapes the sidecar with the shipped job: its self-metrics arrive
        # under job="anomaly-sidecar", with the `sidecar` label the inhibition rules use.
        wait_until(lambda: prom.query('anomaly_sidecar_build_info{job="anomaly-sidecar", sidecar!=""}'), 20, what="sidecar scraped by the compose job")
    finally:
        if sidecar is not None:
            sidecar.stop()
        prom.stop()
        model.stop()
