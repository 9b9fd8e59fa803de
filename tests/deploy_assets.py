"""Loading the shipped deployment assets (deploy/, grafana/) for the tests that check them."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from servers import REPO

DEPLOY = REPO / "deploy"
MIXIN = DEPLOY / "mixin"
RULES_FILE = DEPLOY / "prometheus" / "anomaly-sidecar.rules.yml"
PROMETHEUS_RULE_FILE = DEPLOY / "kubernetes" / "rules" / "prometheusrule.yaml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
ALERT_RECEIVER = DEPLOY / "compose" / "alert_receiver.py"
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
RUNBOOKS = REPO / "docs" / "runbooks"
#: Where the Prometheus Operator CRDs live on development machines (absent elsewhere: tests skip).
OPERATOR_SCHEMAS = REPO.parent / "shared" / "schemas" / "prometheus-operator"

#: The alerts the issue asks for, by purpose.
REQUIRED_ALERTS = {
    "ModelMetricAnomalous": "warning",  # score above 1 for a while
    "ModelMetricAnomalyCritical": "critical",  # severe or sustained
    "AnomalySidecarDown": "warning",
    "AnomalySidecarAbsent": "warning",
    "AnomalySidecarNotScoring": "warning",  # last successful cycle too old
    "AnomalySidecarQueryFailing": "warning",
    "AnomalySidecarCycleTooSlow": "warning",  # cycles slower than their interval
    "AnomalySidecarSeriesNotReady": "info",
}


@lru_cache(maxsize=None)
def generator() -> ModuleType:
    """deploy/mixin/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("anomaly_sidecar_mixin_generate", MIXIN / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def mixin_config() -> dict[str, Any]:
    return yaml.safe_load((MIXIN / "config.yaml").read_text())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def alert_rules() -> dict[str, dict[str, Any]]:
    """Shipped alerting rules by name (from the plain rule file)."""
    return {r["alert"]: r for g in load_yaml(RULES_FILE)["groups"] for r in g["rules"] if "alert" in r}


def sidecar_job() -> str:
    """The job name in config.yaml's sidecar_selector (job="...")."""
    selector = mixin_config()["sidecar_selector"]
    name, _, value = selector.partition("=")
    assert name.strip() == "job" and value.startswith('"') and value.endswith('"'), selector
    return value.strip('"')


def kustomize_command() -> list[str] | None:
    """`kubectl kustomize` or `kustomize build`, whichever is installed; None if neither."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    cmd = kustomize_command()
    assert cmd is not None
    out = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(cmd)} {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# -- Alertmanager and its webhook receiver ------------------------------------------------
def alertmanager_config_for_test(receiver_url: str, fast: bool = True) -> dict[str, Any]:
    """The shipped Alertmanager config with its webhooks pointed at ``receiver_url`` (same paths).

    ``fast`` shortens the grouping timers so that a test sees notifications within seconds;
    routing, grouping keys, receivers and inhibition rules stay as shipped.
    """
    from urllib.parse import urlsplit

    cfg = load_yaml(ALERTMANAGER_CONFIG)
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url.rstrip("/") + urlsplit(hook["url"]).path
    if fast:
        def shorten(route: dict[str, Any]) -> None:
            for key, value in (("group_wait", "1s"), ("group_interval", "1s"), ("repeat_interval", "1h")):
                if key in route:
                    route[key] = value
            for child in route.get("routes", []):
                shorten(child)

        shorten(cfg["route"])
    return cfg


def start_alert_receiver(workdir: Path):
    """deploy/compose/alert_receiver.py on a free loopback port, printing JSON lines; (process, url)."""
    from servers import Process, free_port, wait_until
    import requests

    port = free_port()
    proc = Process(
        "alert-receiver",
        [sys.executable, str(ALERT_RECEIVER), "--host", "127.0.0.1", "--port", str(port), "--json"],
        workdir / "alert-receiver.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url, timeout=2).status_code == 200, 20, what="alert receiver up")
    return proc, url


def received_notifications(receiver) -> list[dict[str, Any]]:
    """Every notification the receiver printed: {"path": "/page", "notification": {...}}."""
    import json

    return [json.loads(line) for line in receiver.log().splitlines() if line.startswith("{")]
