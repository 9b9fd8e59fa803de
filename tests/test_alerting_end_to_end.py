"""End to end: model metric -> sidecar -> Prometheus (shipped scrape job and rules) -> Alertmanager
(shipped routing and inhibition) -> a webhook receiver, all real processes on loopback.

The model history has one pod with a severe anomaly, one with a mild one and one clean pod.
The severe one must page (critical, /page) and the mild one open a ticket (warning, /ticket),
with the scored series' labels; the severe pod's warning is inhibited by its critical; nothing
is notified for the clean pod or the clean query. Stopping the sidecar then notifies
AnomalySidecarDown, naming the same `sidecar` as the anomaly alerts (what inhibition matches on).
"""

from __future__ import annotations

import time

import pytest
from deploy_assets import (
    alertmanager_config_for_test,
    received_notifications,
    sidecar_job,
    start_alert_receiver,
)
from servers import Alertmanager, Prometheus, wait_until
from sidecar_stack import (
    DETECTOR,
    NAMESPACE,
    PODS,
    history_end,
    model_history,
    scaled_rules,
    shipped_sidecar_scrape_job,
    start_sidecar,
)

pytestmark = pytest.mark.integration


def firing(receiver) -> dict[tuple[str, str, str], dict]:
    """Firing alerts notified so far: (path, alertname, pod) -> labels."""
    out = {}
    for n in received_notifications(receiver):
        for alert in n["notification"]["alerts"]:
            if alert["status"] == "firing":
                out[(n["path"], alert["labels"]["alertname"], alert["labels"].get("pod", ""))] = alert
    return out


def test_an_injected_anomaly_pages_through_the_shipped_rules_and_routing_and_the_clean_series_do_not(tmp_path):
    receiver, receiver_url = start_alert_receiver(tmp_path)
    am = Alertmanager(tmp_path, alertmanager_config_for_test(receiver_url))
    prom = Prometheus(tmp_path, evaluation_interval="1s")
    sidecar = None
    try:
        am.start()
        prom.alertmanager_url = am.url
        prom.backfill(model_history(history_end()))
        prom.start()
        # The sidecar is ready (every query scored) before Prometheus scrapes it and loads the
        # rules, so that start-up is not part of what is checked.
        sidecar = start_sidecar(tmp_path, prom.url)
        prom.scrape_configs = [shipped_sidecar_scrape_job(sidecar.port)]
        prom.rule_files = [str(scaled_rules(tmp_path))]
        prom.reload()

        expected = {
            ("/page", "ModelMetricAnomalyCritical", "fraud-0"),
            ("/ticket", "ModelMetricAnomalous", "churn-0"),
        }
        got = wait_until(lambda: expected <= set(firing(receiver)) and firing(receiver), 45, what=f"anomaly notifications; Prometheus alerts: {prom.alerts()}")

        critical = got[("/page", "ModelMetricAnomalyCritical", "fraud-0")]
        model, instance, _ = PODS["fraud-0"]
        assert critical["labels"] == {
            "alertname": "ModelMetricAnomalyCritical",
            "severity": "critical",
            # The scored series' own labels, kept by honor_labels ...
            "job": "model-server",
            "instance": instance,
            "namespace": NAMESPACE,
            "pod": "fraud-0",
            "model": model,
            # ... plus what the sidecar adds, and the scrape job's relabeling.
            "query": "inflight_requests",
            "detector": DETECTOR,
            "sidecar": sidecar.address,
        }
        assert critical["annotations"]["runbook_url"].endswith("/docs/runbooks/ModelMetricAnomalyCritical.md")
        assert critical["annotations"]["description"].startswith("Query inflight_requests scores ")
        assert f"for model {model} in pod {NAMESPACE}/fraud-0 (detector {DETECTOR}, sidecar {sidecar.address})" in critical["annotations"]["description"]
        assert got[("/ticket", "ModelMetricAnomalous", "churn-0")]["labels"]["severity"] == "warning"

        # Let every rule have its (scaled) chance to fire, and the grouping timers to flush.
        prom_firing = lambda: {(a["labels"]["alertname"], a["labels"].get("pod")) for a in prom.alerts() if a["state"] == "firing"}  # noqa: E731
        wait_until(lambda: ("ModelMetricAnomalous", "fraud-0") in prom_firing(), 20, what="the severe pod's warning fires in Prometheus too")
        time.sleep(3)
        assert prom_firing() == {("ModelMetricAnomalyCritical", "fraud-0"), ("ModelMetricAnomalous", "fraud-0"), ("ModelMetricAnomalous", "churn-0")}
        # Nothing else was notified: not the clean pod, not the clean query, not the severe pod's
        # warning (inhibited by its critical), no sidecar health alert.
        assert set(firing(receiver)) == expected
        ever = prom.query('count_over_time(ALERTS{alertstate="firing"}[10m])')
        assert {(s["metric"]["alertname"], s["metric"].get("pod")) for s in ever} == prom_firing()
        # The clean series were scored all along, and quietly.
        clean = prom.series_values('max_over_time(anomaly_score{pod="fraud-1"}[10m])')
        assert len(clean) == 2 and all(v < 1 for v in clean.values()), clean
        rate_scores = prom.series_values('max_over_time(anomaly_score{query="request_rate"}[10m])')
        assert len(rate_scores) == 3 and all(v < 1 for v in rate_scores.values()), rate_scores

        # The sidecar goes away: AnomalySidecarDown is notified, naming the sidecar the anomaly
        # alerts carry, which is what Alertmanager's inhibition matches on.
        sidecar.process.stop()
        down = wait_until(lambda: firing(receiver).get(("/ticket", "AnomalySidecarDown", "")), 30, what=f"AnomalySidecarDown notified; Prometheus alerts: {prom.alerts()}")
        assert down["labels"] == {
            "alertname": "AnomalySidecarDown",
            "severity": "warning",
            "job": sidecar_job(),
            "instance": sidecar.address,
            "sidecar": critical["labels"]["sidecar"],
        }
    finally:
        if sidecar is not None:
            sidecar.process.stop()
        prom.stop()
        am.stop()
        receiver.stop()
