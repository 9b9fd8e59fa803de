"""Runs the demo stack on 127.0.0.1 and shows what the sidecar sees, until Ctrl-C.

Processes: the demo model server (with its load generator), Prometheus scraping it and the
sidecar, Alertmanager, and the sidecar. A webhook receiver in this process prints every
notification Alertmanager sends. Every process is stopped by its pid on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = Path(os.environ.get("ANOMALY_SIDECAR_DEMO_DIR", REPO / ".demo"))
PORTS = {"prometheus": 19090, "alertmanager": 19093, "model": 18000, "sidecar": 19710, "webhook": 19095}


def port_or_free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        sys.exit(f"demo: {binary} not found; run examples/demo/run.sh, which installs it")
    return path


class Stack:
    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.alerts: list[dict] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(DEMO / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.procs.append((name, proc))

    def stop(self) -> None:
        """SIGTERM every child by pid (newest first), then wait; SIGKILL what does not stop."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)

    def wait_ready(self, name: str, path: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for pname, proc in self.procs:
                if pname == name and proc.poll() is not None:
                    sys.exit(f"demo: {name} exited; see {DEMO / (name + '.log')}")
            try:
                if requests.get(self.url(name) + path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        sys.exit(f"demo: {name} not ready after {timeout:.0f}s; see {DEMO / (name + '.log')}")

    # -- configs ---------------------------------------------------------------------------
    def write_prometheus_config(self) -> Path:
        rules = sorted(str(p) for p in (REPO / "deploy" / "prometheus").glob("*.y*ml") if "rule" in p.name or "alert" in p.name)
        cfg = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": rules,
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
            "scrape_configs": [
                {"job_name": "demo-model", "static_configs": [{"targets": [f"127.0.0.1:{self.ports['model']}"], "labels": {"namespace": "demo", "pod": "model-server-0"}}]},
                # honor_labels: the scores keep the model server's job, instance, namespace, pod, model.
                # The `sidecar` label ties anomaly alerts to their sidecar's health alerts (inhibition).
                {
                    "job_name": "anomaly-sidecar",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{self.ports['sidecar']}"]}],
                    "relabel_configs": [{"source_labels": ["__address__"], "target_label": "sidecar"}],
                },
            ],
        }
        path = DEMO / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def write_alertmanager_config(self) -> Path:
        """The shipped routing (deploy/alertmanager/), its receivers pointed at this demo's webhook."""
        cfg = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
        for receiver in cfg.get("receivers", []):
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"{self.url('webhook')}/{receiver['name']}"
        cfg["route"]["group_wait"] = "5s"  # the demo should not keep you waiting
        path = DEMO / "alertmanager.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start_webhook(self) -> None:
        stack = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                for alert in body.get("alerts", []):
                    stack.alerts.append(alert)
                    lbl = alert.get("labels", {})
                    who = ", ".join(f"{k}={lbl[k]}" for k in ("model", "query", "pod") if k in lbl)
                    print(
                        f"\n  >>> webhook {self.path} received: {alert.get('status', '?').upper()} {lbl.get('alertname')} "
                        f"[{lbl.get('severity', '-')}] {who}\n      {alert.get('annotations', {}).get('summary', '')}",
                        flush=True,
                    )
                with open(DEMO / "webhook.jsonl", "a") as f:
                    f.write(json.dumps(body) + "\n")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.ports["webhook"]), Hook)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    # -- status ----------------------------------------------------------------------------
    def print_status(self) -> None:
        try:
            r = requests.get(f"{self.url('prometheus')}/api/v1/query", params={"query": "topk(6, anomaly_score)"}, timeout=5).json()
            nr = requests.get(f"{self.url('prometheus')}/api/v1/query", params={"query": "sum(anomaly_sidecar_series_not_ready)"}, timeout=5).json()
        except requests.RequestException as exc:
            print(f"  (Prometheus not answering: {exc})")
            return
        rows = r.get("data", {}).get("result", [])
        waiting = nr.get("data", {}).get("result", [])
        stamp = time.strftime("%H:%M:%S")
        if not rows:
            n = int(float(waiting[0]["value"][1])) if waiting else 0
            print(f"[{stamp}] warming up: {n} series are collecting history before they get a score (about 5-6 minutes)")
            return
        print(f"[{stamp}] highest anomaly scores (1 = edge of the expected band):")
        for s in rows:
            m = s["metric"]
            score = float(s["value"][1])
            flag = "  <-- ANOMALOUS" if score > 1 else ""
            print(f"    {score:7.2f}  {m.get('query', '?'):<24} model={m.get('model', '-')}{flag}")


def main() -> None:
    p = argparse.ArgumentParser(description="Run the anomaly-sidecar demo on 127.0.0.1")
    p.add_argument("--load", type=float, default=40.0, help="requests per second of the model server's load generator")
    p.add_argument("--status-every", type=float, default=15.0, help="seconds between status lines (0: quiet)")
    args = p.parse_args()
    # Ctrl-C, kill and a closed terminal all end in the same clean stop of every process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    prometheus, alertmanager = need("prometheus"), need("prometheus-alertmanager")
    DEMO.mkdir(exist_ok=True)
    ports = {name: port_or_free(port) for name, port in PORTS.items()}
    stack = Stack(ports)
    stack.start_webhook()
    try:
        stack.spawn("model", [sys.executable, "examples/demo/model_server.py", "--port", str(ports["model"]), "--load", str(args.load)])
        stack.spawn(
            "alertmanager",
            [alertmanager, f"--config.file={stack.write_alertmanager_config()}", f"--storage.path={DEMO / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{ports['alertmanager']}", "--cluster.listen-address=", "--log.level=warn"],
        )
        stack.spawn(
            "prometheus",
            [prometheus, f"--config.file={stack.write_prometheus_config()}", f"--storage.tsdb.path={DEMO / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"],
        )
        stack.wait_ready("prometheus", "/-/ready")
        stack.spawn(
            "sidecar",
            [sys.executable, "-m", "sidecar", "run", "--config", "examples/demo/sidecar.yaml",
             "--prometheus-url", stack.url("prometheus"), "--listen", f"127.0.0.1:{ports['sidecar']}"],
        )
        stack.wait_ready("model", "/healthz")
        stack.wait_ready("alertmanager", "/-/ready")
        stack.wait_ready("sidecar", "/-/ready")
        m = stack.url("model")
        print(
            f"""
anomaly-sidecar demo is running (logs and data in {DEMO}/). Open:
  sidecar landing page   {stack.url('sidecar')}/
  sidecar metrics        {stack.url('sidecar')}/metrics
  Prometheus graph       {stack.url('prometheus')}/graph?g0.expr=anomaly_score&g0.tab=0&g0.range_input=30m
  Prometheus alerts      {stack.url('prometheus')}/alerts
  Alertmanager           {stack.url('alertmanager')}/
  model server           {m}/metrics

Series need about 5-6 minutes of history before they are scored. Then inject an anomaly
(latency, errors, traffic_drop, drift, memory_leak), for 10 minutes, on model fraud-v3:
  curl -X POST '{m}/scenario/latency?model=fraud-v3&duration=600'
and watch its score rise above 1 below, in Prometheus, and (after the alert's 'for:' time)
as a notification at this terminal's webhook receiver. End all scenarios with:
  curl -X DELETE {m}/scenario
Ctrl-C stops everything.
""",
            flush=True,
        )
        while True:
            time.sleep(args.status_every or 3600)
            if args.status_every:
                stack.print_status()
            for name, proc in stack.procs:
                if proc.poll() is not None:
                    sys.exit(f"demo: {name} exited; see {DEMO / (name + '.log')}")
    except KeyboardInterrupt:
        print("\nstopping the demo ...")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
