"""README's first command: the demo stack starts, shows scores, takes a scenario, stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from servers import REPO, require_binary, wait_until

pytestmark = pytest.mark.integration


def test_the_demo_starts_serves_scores_and_stops_every_process(tmp_path):
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    env = {**os.environ, "ANOMALY_SIDECAR_DEMO_DIR": str(tmp_path / "demo")}
    proc = subprocess.Popen(
        [sys.executable, "examples/demo/run.py", "--status-every", "0", "--load", "10"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("Ctrl-C stops everything" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "anomaly-sidecar demo is running" in text, text
        urls = dict(re.findall(r"^\s+(sidecar landing page|Prometheus graph|model server)\s+(\S+)", text, re.M))
        sidecar = urls["sidecar landing page"].rstrip("/")
        model = urls["model server"].rsplit("/metrics", 1)[0]
        prom = urls["Prometheus graph"].split("/graph")[0]
        page = requests.get(sidecar + "/", timeout=5).text
        for q in ("request_latency_p99", "error_ratio", "throughput", "inflight_requests", "prediction_score_mean", "resident_memory"):
            assert f"<b>{q}</b>" in page
        assert requests.get(sidecar + "/-/ready", timeout=5).status_code == 200
        # The printed injection command works.
        r = requests.post(f"{model}/scenario/errors?model=fraud-v3&duration=60", timeout=5)
        assert r.json()["active"] == {"errors:fraud-v3": 60}
        # Prometheus scrapes both the model server and the sidecar, and loaded the shipped rules.
        wait_until(lambda: len(requests.get(f"{prom}/api/v1/query", params={"query": "up == 1"}, timeout=5).json()["data"]["result"]) == 2, 30, what="both targets up")
        rules = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert any(r["name"] == "ModelMetricAnomalous" for g in rules for r in g["rules"])
        ports = [int(u.rsplit(":", 1)[1].split("/")[0]) for u in (sidecar, model, prom)]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "stopping the demo" in out
    for port in ports:  # every child is gone with its port
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
