"""Every dashboard query, run against a real Prometheus that holds real sidecar output.

A sidecar scores backfilled model history (with anomalies) and Prometheus scrapes it with the
shipped scrape job, as a Kubernetes pod would be scraped (namespace and pod target labels),
and evaluates the shipped rules (so ALERTS exists). Then, per dashboard, each template variable
query is asked the way Grafana asks it (label values of a series selector, with the variables
before it filled in) and must return values; each panel and annotation query, with Grafana's
macros and the variables expanded, must succeed and return data: once with one value per
variable (the drill-down's way), and on the overview and health dashboards once with "All".
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from dashboard_queries import Query, dashboards, expand, panel_queries, variable_queries
from servers import Prometheus, wait_until
from sidecar_stack import history_end, model_history, scaled_rules, shipped_sidecar_scrape_job, start_sidecar

pytestmark = pytest.mark.integration

BOARDS = dashboards()
#: Which value each variable takes when one is chosen: the anomalous pod, so that alert panels have data.
PREFERRED = {"namespace": "ml", "model": "fraud-v3", "pod": "fraud-0", "query": "inflight_requests"}
#: The sidecar's own pod, as Kubernetes service discovery would label its target.
SIDECAR_TARGET_LABELS = {"namespace": "monitoring", "pod": "anomaly-sidecar-0"}
WINDOW = 120  # seconds of range queries, as a panel showing the last minutes asks


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashboards")
    prom = Prometheus(workdir, evaluation_interval="1s")
    sidecar = None
    try:
        prom.backfill(model_history(history_end()))
        prom.start()
        sidecar = start_sidecar(workdir, prom.url)
        prom.scrape_configs = [shipped_sidecar_scrape_job(sidecar.port, target_labels=SIDECAR_TARGET_LABELS)]
        prom.rule_files = [str(scaled_rules(workdir))]
        prom.reload()
        # Enough scrapes for rate() windows, cycle histograms and a firing anomaly alert.
        wait_until(lambda: prom.query('ALERTS{alertname="ModelMetricAnomalyCritical", alertstate="firing", pod="fraud-0"}'), 30, what="a firing anomaly alert")
        wait_until(lambda: prom.query("rate(anomaly_sidecar_cycle_duration_seconds_count[1m]) > 0"), 30, what="cycle rates")
        time.sleep(2)
        yield prom
    finally:
        if sidecar is not None:
            sidecar.process.stop()
        prom.stop()


def label_values(prom: Prometheus, selector: str, label: str) -> list[str]:
    """What Grafana's label_values(selector, label) asks Prometheus (over the dashboard's range)."""
    now = time.time()
    params: dict[str, Any] = {"start": now - 3600, "end": now}
    if selector:
        params["match[]"] = selector
    r = requests.get(f"{prom.url}/api/v1/label/{label}/values", params=params, timeout=10)
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def choose_values(prom: Prometheus, name: str) -> dict[str, str]:
    """Each variable in order, its query expanded with the values chosen before it."""
    chosen: dict[str, str] = {}
    for query, label in variable_queries(name, BOARDS[name]):
        values = label_values(prom, expand(query.expr, chosen), label)
        assert values, f"{query}: label_values({query.expr}, {label}) returned nothing"
        var = query.where.removeprefix("variable ")
        chosen[var] = PREFERRED.get(var) if PREFERRED.get(var) in values else values[0]
    return chosen


def run(prom: Prometheus, query: Query, values: dict[str, str]) -> list[dict[str, Any]]:
    expr = expand(query.expr, values)
    now = time.time()
    if query.instant:
        params = {"query": expr, "time": now}
        r = requests.get(f"{prom.url}/api/v1/query", params=params, timeout=10)
    else:
        params = {"query": expr, "start": now - WINDOW, "end": now, "step": 5}
        r = requests.get(f"{prom.url}/api/v1/query_range", params=params, timeout=10)
    body = r.json()
    assert body.get("status") == "success", f"{query}: {expr}\n{body}"
    return body["data"]["result"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_template_variable_query_returns_values(stack, name):
    chosen = choose_values(stack, name)
    assert len(chosen) == len(variable_queries(name, BOARDS[name]))
    if name != "anomaly-sidecar-health":
        assert chosen == PREFERRED
    else:
        assert chosen["namespace"] == "monitoring" and chosen["pod"] == "anomaly-sidecar-0"


CASES = [(name, q) for name in sorted(BOARDS) for q in panel_queries(name, BOARDS[name])]


@pytest.mark.parametrize("name,query", CASES, ids=[str(q) for _, q in CASES])
def test_every_panel_and_annotation_query_succeeds_and_returns_data(stack, name, query):
    values = choose_values(stack, name)
    assert run(stack, query, values), f"{query}: no data for {values}\n{expand(query.expr, values)}"
    if any(v["multi"] for v in BOARDS[name]["templating"]["list"] if v["type"] == "query"):
        assert run(stack, query, {}), f"{query}: no data with every variable on All\n{expand(query.expr)}"
