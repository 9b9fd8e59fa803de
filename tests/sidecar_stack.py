"""A real monitoring stack around a real sidecar, built from the shipped configs, for the deploy tests.

Model-serving history is backfilled into Prometheus with promtool, so the detectors are ready
at once; the sidecar runs as a process; Prometheus scrapes it with the shipped `anomaly-sidecar`
scrape job (honor_labels and the `sidecar` relabeling, from deploy/prometheus/prometheus.yml)
and evaluates the shipped alerting rules with their `for:` durations scaled down (60 times
shorter by default) so that alerts fire within seconds. The rules' expressions, labels and
annotations stay exactly as shipped; `for:` behaviour itself is covered by the promtool unit
tests.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml
from deploy_assets import PROMETHEUS_CONFIG, RULES_FILE, load_yaml
from servers import Process, free_port, openmetrics, sidecar_command, wait_until

from sidecar.durations import format_duration, parse_duration

STEP = 15.0
DETECTOR = "robust_zscore"
HISTORY = 2 * 3600.0
ANOMALY_SECONDS = 180.0

#: The model pods of the backfilled history: pod -> (model, instance, what its last minutes look like).
PODS = {
    "fraud-0": ("fraud-v3", "10.1.0.10:8000", "severe"),  # in-flight requests jump 5 -> 40 (score far above 3)
    "churn-0": ("churn-v1", "10.1.0.20:8000", "mild"),  # 5 -> 8.5 (score about 2)
    "fraud-1": ("fraud-v3", "10.1.0.11:8000", "clean"),
}
NAMESPACE = "ml"
QUERIES = [
    # Raw series: scores keep the model server's own job and instance (honor_labels).
    {"name": "inflight_requests", "expr": "model_inflight_requests"},
    # Aggregated: job and instance are gone, the scores get the sidecar's.
    {"name": "request_rate", "expr": "sum by (namespace, pod, model) (rate(model_requests_total[1m]))"},
]


def model_history(end: float, seed: int = 7) -> str:
    """Two hours of in-flight requests (gauge) and request counts (counter) per pod, ending at ``end``.

    Noise is Gaussian around a constant, so the detectors' bands are about ±1.75 (in-flight) wide;
    the last three minutes of each pod are set to its scenario, and of the clean pod (and of
    every request counter) to the exact typical value, so that its score is about 0.
    """
    rng = np.random.default_rng(seed)
    ts = np.arange(end - HISTORY, end + 1e-6, STEP)
    tail = ts > end - ANOMALY_SECONDS
    samples = []
    for pod, (model, instance, scenario) in PODS.items():
        labels = {"job": "model-server", "instance": instance, "namespace": NAMESPACE, "pod": pod, "model": model}
        inflight = 5 + rng.normal(0, 0.5, ts.size)
        inflight[tail] = {"severe": 40.0, "mild": 8.5, "clean": 5.0}[scenario]
        samples += [("model_inflight_requests", labels, float(v), float(t)) for v, t in zip(inflight, ts)]
        increments = 150 + rng.normal(0, 5, ts.size)
        increments[tail] = 150.0
        count = np.cumsum(increments)
        samples += [("model_requests_total", {**labels, "status": "200"}, float(v), float(t)) for v, t in zip(count, ts)]
    return openmetrics(samples, {"model_requests_total": "counter"})


def write_sidecar_config(path: Path, prometheus_url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "prometheus": {"url": prometheus_url, "timeout": "5s"},
                # The scenarios' sizes (mild about 2, severe far above 3) are set for robust_zscore's
                # band; and the backfilled counters stop at the end of the history, a real traffic
                # drop that the default detector flags within the test's minute. These stacks test
                # rules, routing, labels and dashboards, so they pin the detector they were sized for.
                "defaults": {"interval": "2s", "step": f"{STEP:.0f}s", "history": "1h", "series_ttl": "30s", "detector": DETECTOR},
                "queries": QUERIES,
            },
            sort_keys=False,
        )
    )
    return path


def shipped_sidecar_scrape_job(port: int, scrape_interval: str = "1s", target_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The `anomaly-sidecar` job of deploy/prometheus/prometheus.yml, pointed at the test's sidecar."""
    (job,) = [j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "anomaly-sidecar"]
    job = copy.deepcopy(job)
    job["scrape_interval"] = scrape_interval
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"], **({"labels": target_labels} if target_labels else {})}]
    return job


def scaled_rules(workdir: Path, factor: float = 60.0) -> Path:
    """The shipped rule file with every `for:` divided by ``factor`` (5m -> 5s); nothing else changed."""
    doc = load_yaml(RULES_FILE)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = format_duration(max(1.0, parse_duration(rule["for"]) / factor))
    path = workdir / "anomaly-sidecar.rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Sidecar:
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_sidecar(workdir: Path, prometheus_url: str) -> Sidecar:
    """The real sidecar as a process; returns once every query has been scored (ready, scores out)."""
    port = free_port()
    config = write_sidecar_config(workdir / "sidecar.yaml", prometheus_url)
    proc = Process(
        "sidecar",
        sidecar_command("run", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--log-format", "json"),
        workdir / "sidecar.log",
    ).start()
    sidecar = Sidecar(proc, port)

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"sidecar exited:\n{proc.log()[-3000:]}")
        return requests.get(f"{sidecar.url}/-/ready", timeout=2).status_code == 200

    wait_until(ready, 60, what="sidecar ready")
    expected = len(PODS) * len(QUERIES)
    wait_until(
        lambda: requests.get(f"{sidecar.url}/metrics", timeout=5).text.count("\nanomaly_score{") == expected,
        30,
        what=f"{expected} anomaly_score series on the sidecar\n{proc.log()[-2000:]}",
    )
    return sidecar


def history_end() -> float:
    """The last backfilled sample: a second ago, so the sidecar's first cycle sees it as 'now'."""
    return float(np.floor(time.time())) - 1
