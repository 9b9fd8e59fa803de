"""Real Prometheus, Alertmanager and sidecar processes for tests, on free loopback ports.

Every process is started on 127.0.0.1 and stopped by its own pid. Tests that need a binary
that is missing fail with a clear message (CI installs them; see .ci/run) unless
ANOMALY_SIDECAR_SKIP_MISSING_BINARIES=1 asks for a skip instead.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: install the Debian packages prometheus and prometheus-alertmanager (see .ci/run)"
        if os.environ.get("ANOMALY_SIDECAR_SKIP_MISSING_BINARIES") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the server may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class Process:
    """A child process started by a test; ``stop`` signals it by pid and reaps it."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Prometheus:
    """A real Prometheus server with a config and TSDB of the test's own."""

    workdir: Path
    scrape_configs: list[dict[str, Any]] = field(default_factory=list)
    rule_files: list[str] = field(default_factory=list)
    alertmanager_url: str | None = None
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    port: int = 0
    process: Process | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.data_dir = self.workdir / "prometheus-data"
        self.config_path = self.workdir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "scrape_configs": self.scrape_configs,
        }
        if self.rule_files:
            cfg["rule_files"] = self.rule_files
        if self.alertmanager_url:
            target = self.alertmanager_url.split("//", 1)[1]
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def backfill(self, openmetrics: str) -> None:
        """Write history into the TSDB with promtool before the server starts."""
        promtool = require_binary("promtool")
        src = self.workdir / f"backfill-{time.monotonic_ns()}.om"
        src.write_text(openmetrics)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, f"promtool backfill failed: {out.stderr or out.stdout}"

    def start(self) -> "Prometheus":
        binary = require_binary("prometheus")
        self.write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=30d",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
        ).start()
        wait_until(self._ready, 60, what=f"Prometheus ready on {self.url}\n{self.process.log()[-2000:]}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise AssertionError(f"Prometheus exited:\n{self.process.log()[-3000:]}")
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def reload(self) -> None:
        self.write_config()
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    # -- Prometheus' own query API: how tests check results ---------------------------
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        r = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def series_values(self, expr: str) -> dict[frozenset, float]:
        """Instant vector as {frozenset(labels.items()): value}."""
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in self.query(expr)}

    def targets_up(self, job: str) -> bool:
        res = self.query(f'up{{job="{job}"}}')
        return bool(res) and all(float(s["value"][1]) == 1 for s in res)

    def alerts(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v1/alerts", timeout=10)
        return r.json()["data"]["alerts"]


@dataclass
class Alertmanager:
    """A real Alertmanager (Debian's prometheus-alertmanager) with the test's config."""

    workdir: Path
    config: dict[str, Any]
    port: int = 0
    process: Process | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.cluster_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Alertmanager":
        binary = require_binary("prometheus-alertmanager")
        cfg = self.workdir / "alertmanager.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        data = self.workdir / "alertmanager-data"
        data.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            "alertmanager",
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Clustering off: no gossip traffic beyond loopback.
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            self.workdir / "alertmanager.log",
        ).start()
        wait_until(
            lambda: requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
            60,
            what=f"Alertmanager ready\n{self.process.log()[-2000:]}",
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def sidecar_command(*args: str) -> list[str]:
    """The installed CLI, run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "sidecar", *args]


def openmetrics(samples: Iterable[tuple[str, dict[str, str], float, float]], types: dict[str, str]) -> str:
    """Render (name, labels, value, unix_ts) samples as OpenMetrics text for ``promtool tsdb``."""
    by_name: dict[str, list[tuple[str, float, str]]] = {}
    for name, labels, value, ts in samples:
        lbl = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        v = "NaN" if math.isnan(value) else repr(float(value))
        by_name.setdefault(name, []).append((lbl, ts, f"{name}{{{lbl}}} {v} {ts:.3f}"))
    out: list[str] = []
    for name, lines in by_name.items():
        family = name[: -len("_total")] if types.get(name) == "counter" and name.endswith("_total") else name
        out.append(f"# HELP {family} test data")
        out.append(f"# TYPE {family} {types.get(name, 'gauge')}")
        out.extend(line for _, _, line in sorted(lines, key=lambda x: (x[0], x[1])))
    out.append("# EOF")
    return "\n".join(out) + "\n"
