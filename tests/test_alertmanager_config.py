"""The example Alertmanager config: valid, routes by severity, groups per model pod, inhibits as documented."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import requests

from deploy_assets import (
    ALERTMANAGER_CONFIG,
    alert_rules,
    alertmanager_config_for_test,
    load_yaml,
    mixin_config,
    received_notifications,
    start_alert_receiver,
)
from servers import Alertmanager, require_binary, wait_until

RECEIVER_BY_SEVERITY = {"critical": "page", "warning": "ticket", "info": "none"}


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("amtool"), *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config_accepts_the_example_config():
    out = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize("alert", sorted(alert_rules()))
def test_each_alert_is_routed_to_the_receiver_of_its_severity(alert):
    severity = alert_rules()[alert]["labels"]["severity"]
    out = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", f"alertname={alert}", f"severity={severity}", "namespace=ml", "model=ranker", "pod=ranker-0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [RECEIVER_BY_SEVERITY[severity]]


def test_alerts_are_grouped_by_namespace_model_and_pod_so_one_incident_is_one_page():
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert route["group_by"] == ["namespace", "model", "pod"]
    assert all("group_by" not in child for child in route["routes"]), "child routes inherit the grouping"


def test_every_receiver_that_notifies_is_a_webhook():
    receivers = {r["name"]: r for r in load_yaml(ALERTMANAGER_CONFIG)["receivers"]}
    assert set(receivers) == set(RECEIVER_BY_SEVERITY.values())
    for name in ("page", "ticket"):
        (hook,) = receivers[name]["webhook_configs"]
        assert hook["url"].startswith("http") and hook["send_resolved"] is True


def test_inhibition_rules_name_shipped_alerts_and_match_on_the_sidecar_label():
    alerts = set(alert_rules())
    sidecar_label = mixin_config()["sidecar_label"]
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]

    def names(matchers: list[str]) -> set[str]:
        (m,) = [x for x in matchers if x.startswith("alertname")]
        op, value = re.match(r'alertname(=~|=)"(.*)"', m).groups()
        return {a for a in alerts if (re.fullmatch(value, a) if op == "=~" else a == value)}

    by_source = {frozenset(names(r["source_matchers"])): r for r in rules}
    assert all(names(r["source_matchers"]) and names(r["target_matchers"]) for r in rules)
    down = by_source[frozenset({"AnomalySidecarDown"})]
    assert names(down["target_matchers"]) == alerts - {"AnomalySidecarDown", "AnomalySidecarAbsent"}
    assert sidecar_label in down["equal"]
    absent = by_source[frozenset({"AnomalySidecarAbsent"})]
    assert names(absent["target_matchers"]) == alerts - {"AnomalySidecarAbsent"}


def _alert(name: str, **labels: str) -> dict:
    now = datetime.now(timezone.utc)
    severity = alert_rules()[name]["labels"]["severity"]
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


@pytest.mark.integration
def test_a_real_alertmanager_inhibits_exactly_the_alerts_of_a_sidecar_that_is_down_or_failing(tmp_path):
    receiver, receiver_url = start_alert_receiver(tmp_path)
    am = Alertmanager(tmp_path, alertmanager_config_for_test(receiver_url))
    try:
        am.start()
        s1 = {"sidecar": "monitoring/anomaly-sidecar-1"}
        s2 = {"sidecar": "monitoring/anomaly-sidecar-2"}
        series = {"namespace": "ml", "model": "ranker", "detector": "robust_zscore"}
        alerts = {
            "s1 down": _alert("AnomalySidecarDown", job="anomaly-sidecar", instance="10.0.0.1:9710", **s1),
            "s1 anomaly": _alert("ModelMetricAnomalous", query="latency", pod="ranker-0", **series, **s1),
            "s2 critical": _alert("ModelMetricAnomalyCritical", query="latency", pod="ranker-1", **series, **s2),
            "s2 warning, same series": _alert("ModelMetricAnomalous", query="latency", pod="ranker-1", **series, **s2),
            "s2 warning, other query": _alert("ModelMetricAnomalous", query="throughput", pod="ranker-1", **series, **s2),
            "s2 query failing": _alert("AnomalySidecarQueryFailing", job="anomaly-sidecar", query="errors", reason="timeout", **s2),
            "s2 anomaly of the failing query": _alert("ModelMetricAnomalous", query="errors", pod="ranker-2", **series, **s2),
        }
        requests.post(f"{am.url}/api/v2/alerts", json=list(alerts.values()), timeout=10).raise_for_status()

        def states() -> dict[str, str]:
            got = requests.get(f"{am.url}/api/v2/alerts", timeout=10).json()
            by_labels = {frozenset(a["labels"].items()): a["status"]["state"] for a in got}
            return {k: by_labels.get(frozenset(v["labels"].items()), "missing") for k, v in alerts.items()}

        expected = {
            "s1 down": "active",
            "s1 anomaly": "suppressed",  # its sidecar is down
            "s2 critical": "active",
            "s2 warning, same series": "suppressed",  # the critical covers it
            "s2 warning, other query": "active",
            "s2 query failing": "active",
            "s2 anomaly of the failing query": "suppressed",  # its query's scores are stale
        }
        wait_until(lambda: states() == expected, 15, what=f"inhibition as expected; last: {states()}")

        # Only the active alerts are notified, to the receiver of their severity.
        def notified() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for n in received_notifications(receiver):
                for a in n["notification"]["alerts"]:
                    out.setdefault(n["path"], set()).add(a["labels"]["alertname"] + " " + a["labels"].get("query", ""))
            return out

        wait_until(lambda: len(notified().get("/ticket", ())) == 3 and notified().get("/page"), 20, what=f"notifications; got {notified()}")
        assert notified() == {
            "/page": {"ModelMetricAnomalyCritical latency"},
            "/ticket": {"AnomalySidecarDown ", "ModelMetricAnomalous throughput", "AnomalySidecarQueryFailing errors"},
        }

        # No sidecar at all: every other anomaly-sidecar alert is muted.
        requests.post(f"{am.url}/api/v2/alerts", json=[_alert("AnomalySidecarAbsent", job="anomaly-sidecar")], timeout=10).raise_for_status()
        wait_until(
            lambda: {k: v for k, v in states().items()} == {k: "suppressed" for k in alerts},
            15,
            what=f"everything inhibited by AnomalySidecarAbsent; last: {states()}",
        )
    finally:
        am.stop()
        receiver.stop()
