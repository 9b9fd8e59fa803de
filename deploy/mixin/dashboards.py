"""The Grafana dashboards of anomaly-sidecar, built from config.yaml (generate.py writes the JSON).

Conventions every dashboard follows (tests/test_dashboards.py lints them):
- a fixed ``uid`` and the tags of config.yaml, links to the other dashboards by tag;
- a ``datasource`` variable that every panel, target, variable and annotation uses;
- label filters from ``label_values`` variables (``namespace``, ``model``, ``pod``, ``query``
  on the anomaly dashboards; ``namespace``, ``pod``, sidecar and ``query`` on the health one);
- ``[$__rate_interval]`` as the range of every rate / irate / increase.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39


class Board:
    """Accumulates panels on Grafana's 24-column grid, left to right, then down."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": w, "h": h}
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)


def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    return {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "editorMode": "code",
    }


def targets(*specs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def stat(title: str, expr: str, description: str, unit: str = "short", steps=((None, "green"),), legend: str = "__auto") -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, legend, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": _thresholds(*steps)}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries(title: str, tgts: list[dict[str, Any]], description: str, unit: str = "short", **custom: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never", "spanNulls": False},
        "thresholds": _thresholds((None, "green")),
    }
    overrides = custom.pop("overrides", [])
    if "thresholds" in custom:
        defaults["thresholds"] = custom.pop("thresholds")
        defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    defaults["custom"].update(custom)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"], "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title: str, expr: str, description: str, links: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True, fmt="table")],
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}, "renameByName": {"Value": "score"}}}],
        "fieldConfig": {
            "defaults": {"links": links or [], "custom": {"filterable": True}},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "score"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {"id": "decimals", "value": 2},
                    ],
                }
            ],
        },
        "options": {"showHeader": True, "sortBy": [{"displayName": "score", "desc": True}]},
    }


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "regex": "",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "includeAll": False,
        "multi": False,
    }


def query_var(name: str, query: str, label: str, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new pods and models appear without a reload
        "regex": "",
        "sort": 1,
        "current": {},
        "hide": 0,
        "includeAll": multi,
        "multi": multi,
        # Series without the label match too (e.g. no `pod` on a plain-Prometheus setup).
        **({"allValue": ".*"} if multi else {}),
    }


def _sel(*parts: str) -> str:
    return "{" + ", ".join(p for p in parts if p) + "}"


def _common(config: dict[str, Any], uid_suffix: str, title: str, description: str, board: Board, variables, annotations) -> dict[str, Any]:
    return {
        "uid": f"{config['dashboard_uid_prefix']}-{uid_suffix}",
        "title": title,
        "description": description,
        "tags": list(config["dashboard_tags"]),
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "links": [
            {
                "title": "Anomaly sidecar",
                "type": "dashboards",
                "tags": list(config["dashboard_tags"]),
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "templating": {"list": [datasource_var(), *variables]},
        "panels": board.panels,
    }


def _anomaly_vars(config: dict[str, Any], multi: bool) -> tuple[list[dict[str, Any]], str]:
    base = config.get("anomaly_selector") or ""
    ns = _sel(base)
    model = _sel(base, 'namespace=~"$namespace"')
    pod = _sel(base, 'namespace=~"$namespace"', 'model=~"$model"')
    query = _sel(base, 'namespace=~"$namespace"', 'model=~"$model"', 'pod=~"$pod"')
    variables = [
        query_var("namespace", f"label_values(anomaly_score{ns if ns != '{}' else ''}, namespace)", "Namespace", multi),
        query_var("model", f"label_values(anomaly_score{model}, model)", "Model", multi),
        query_var("pod", f"label_values(anomaly_score{pod}, pod)", "Pod", multi),
        query_var("query", f"label_values(anomaly_score{query}, query)", "Query", multi),
    ]
    selector = _sel(base, 'namespace=~"$namespace"', 'model=~"$model"', 'pod=~"$pod"', 'query=~"$query"')
    return variables, selector


def _alert_annotation(config: dict[str, Any], selector_parts: str) -> dict[str, Any]:
    return {
        "name": "Anomaly alerts",
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "expr": f'ALERTS{{alertname=~"{config["anomaly_alerts_regex"]}", alertstate="firing", {selector_parts}}}',
        "step": "30s",
        "titleFormat": "{{alertname}}",
        "textFormat": "{{severity}}: {{query}} {{model}} {{namespace}}/{{pod}}",
        "tagKeys": "severity,query",
        "useValueForTime": False,
    }


_FILTERS = 'namespace=~"$namespace", model=~"$model", pod=~"$pod", query=~"$query"'


def overview(config: dict[str, Any]) -> dict[str, Any]:
    variables, sel = _anomaly_vars(config, multi=True)
    warn, crit = config["warning_score"], config["critical_score"]
    prefix = config["dashboard_uid_prefix"]
    score_steps = ((None, "green"), (1, "red"))
    b = Board()
    b.add(stat("Series anomalous now", f"count(anomaly_score{sel} > {warn}) or vector(0)", f"Scored series whose latest score is above {warn} (outside the expected band).", steps=score_steps), 6, 4)
    b.add(stat("Series severely anomalous now", f"count(anomaly_score{sel} > {crit}) or vector(0)", f"Scored series whose latest score is above {crit}.", steps=score_steps), 6, 4)
    b.add(stat("Series scored", f"count(anomaly_score{sel}) or vector(0)", "Series that currently have an anomaly score."), 6, 4)
    b.add(
        stat(
            "Anomaly alerts firing",
            f'count(ALERTS{{alertname=~"{config["anomaly_alerts_regex"]}", alertstate="firing", {_FILTERS}}}) or vector(0)',
            "Anomaly alerts that Prometheus is firing now for the selected series.",
            steps=score_steps,
        ),
        6,
        4,
    )
    b.add(
        timeseries(
            "Anomaly score",
            [target(f"anomaly_score{sel}", "{{namespace}}/{{pod}} {{model}} {{query}}")],
            f"0 = as expected, 1 = edge of the expected band, above {warn} anomalous (warning), above {crit} severe.",
            thresholds=_thresholds((None, "green"), (warn, "orange"), (crit, "red")),
        ),
        24,
        9,
    )
    b.add(
        {
            "type": "heatmap",
            "title": "Highest score by model and pod",
            "description": "One row per model and pod, coloured by the highest score of its series.",
            "datasource": DS,
            "targets": [target(f"max by (model, pod) (anomaly_score{sel})", "{{model}} / {{pod}}")],
            "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
            "options": {
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "YlOrRd", "fill": "dark-orange", "scale": "linear", "steps": 64, "min": 0, "max": crit, "exponent": 0.5, "reverse": False},
                "yAxis": {"axisPlacement": "left", "reverse": False},
                "rowsFrame": {"layout": "auto"},
                "showValue": "never",
                "legend": {"show": True},
                "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
                "exemplars": {"color": "rgba(255,0,255,0.7)"},
            },
        },
        24,
        9,
    )
    link = {
        "title": "Open this series",
        "url": f"/d/{prefix}-series/?${{datasource:queryparam}}&var-namespace=${{__data.fields.namespace}}&var-model=${{__data.fields.model}}"
        "&var-pod=${__data.fields.pod}&var-query=${__data.fields.query}&${__url_time_range}",
    }
    b.add(table("Top 10 series by highest score in the time range", f"topk(10, max_over_time(anomaly_score{sel}[$__range]))", "Click a row to open its drill-down.", [link]), 12, 10)
    b.add(table("Anomalous series", f"anomaly_score{sel} > {warn}", f"Series whose latest score is above {warn}. Click a row to open its drill-down.", [link]), 12, 10)
    return _common(
        config,
        "overview",
        "Anomaly sidecar / Overview",
        "Which model metrics are anomalous now and over time, by model and pod.",
        b,
        variables,
        [_alert_annotation(config, _FILTERS)],
    )


def series(config: dict[str, Any]) -> dict[str, Any]:
    variables, sel = _anomaly_vars(config, multi=False)
    warn, crit = config["warning_score"], config["critical_score"]
    b = Board()
    b.add(stat("Score", f"anomaly_score{sel}", f"Latest score: above {warn} is anomalous.", steps=((None, "green"), (warn, "orange"), (crit, "red")), legend="{{detector}}"), 6, 4)
    b.add(stat("Observed", f"anomaly_value{sel}", "Latest observed value of the series."), 6, 4)
    b.add(stat("Expected", f"anomaly_expected{sel}", "What the detector expected for the latest point."), 6, 4)
    b.add(stat("Band width", f"anomaly_upper{sel} - anomaly_lower{sel}", "Width of the expected band (upper - lower)."), 6, 4)
    band_override = [
        {"matcher": {"id": "byName", "options": "upper"}, "properties": [
            {"id": "custom.fillBelowTo", "value": "lower"},
            {"id": "custom.fillOpacity", "value": 20},
            {"id": "custom.lineWidth", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}},
        ]},
        {"matcher": {"id": "byName", "options": "lower"}, "properties": [
            {"id": "custom.lineWidth", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}},
        ]},
        {"matcher": {"id": "byName", "options": "expected"}, "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
        ]},
        {"matcher": {"id": "byName", "options": "observed"}, "properties": [
            {"id": "custom.lineWidth", "value": 2},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "orange"}},
        ]},
    ]
    b.add(
        timeseries(
            "Observed value and expected band",
            targets(
                (f"anomaly_value{sel}", "observed"),
                (f"anomaly_expected{sel}", "expected"),
                (f"anomaly_lower{sel}", "lower"),
                (f"anomaly_upper{sel}", "upper"),
            ),
            "The observed value against the band the detector expects (shaded); red marks are firing anomaly alerts.",
            overrides=band_override,
        ),
        24,
        10,
    )
    b.add(
        timeseries(
            "Anomaly score",
            [target(f"anomaly_score{sel}", "score ({{detector}})")],
            f"0 = as expected, 1 = edge of the band, above {warn} anomalous, above {crit} severe.",
            thresholds=_thresholds((None, "green"), (warn, "orange"), (crit, "red")),
        ),
        24,
        8,
    )
    b.add(
        {
            "type": "state-timeline",
            "title": "Anomaly alerts",
            "description": "Pending and firing anomaly alerts of this series.",
            "datasource": DS,
            "targets": [target(f'ALERTS{{alertname=~"{config["anomaly_alerts_regex"]}", {_FILTERS}}}', "{{alertname}} {{alertstate}}")],
            "fieldConfig": {
                "defaults": {
                    "color": {"mode": "fixed", "fixedColor": "red"},
                    "custom": {"fillOpacity": 80, "lineWidth": 0},
                },
                "overrides": [],
            },
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "legend": {"showLegend": False}},
        },
        24,
        5,
    )
    return _common(
        config,
        "series",
        "Anomaly sidecar / Series",
        "One scored series: its value inside the expected band, its score and its alerts.",
        b,
        variables,
        [_alert_annotation(config, _FILTERS)],
    )


def health(config: dict[str, Any]) -> dict[str, Any]:
    sc = config["sidecar_selector"]
    sl = config["sidecar_label"]
    target_filter = f'namespace=~"$namespace", pod=~"$pod", {sl}=~"${sl}"'
    proc = _sel(sc, target_filter)  # process_* and up: no query label
    q = _sel(sc, target_filter, 'query=~"$query"')
    ns_f, pod_f = 'namespace=~"$namespace"', 'pod=~"$pod"'
    variables = [
        query_var("namespace", f"label_values(anomaly_sidecar_build_info{_sel(sc)}, namespace)", "Namespace"),
        query_var("pod", f"label_values(anomaly_sidecar_build_info{_sel(sc, ns_f)}, pod)", "Pod"),
        query_var(sl, f"label_values(anomaly_sidecar_build_info{_sel(sc, ns_f, pod_f)}, {sl})", "Sidecar"),
        query_var("query", f"label_values(anomaly_sidecar_query_interval_seconds{_sel(sc, target_filter)}, query)", "Query"),
    ]
    ok = ((None, "green"),)
    bad_if_any = ((None, "green"), (1, "red"))
    b = Board()
    b.add(stat("Sidecars up", f"sum(up{proc})", "Sidecar targets that Prometheus scrapes successfully.", steps=((None, "red"), (1, "green"))), 4, 4)
    b.add(stat("Queries with a successful cycle", f"count(anomaly_sidecar_last_success_timestamp_seconds{q}) or vector(0)", "Queries that have completed a cycle: the sidecar is ready once every query has.", steps=ok), 4, 4)
    b.add(stat("Queries failing", f"count(anomaly_sidecar_query_success{q} == 0) or vector(0)", "Queries whose last cycle failed.", steps=bad_if_any), 4, 4)
    b.add(stat("Series scored", f"sum(anomaly_sidecar_series_scored{q})", "Series scored in the last cycle of each query.", steps=ok), 4, 4)
    b.add(stat("Series not ready", f"sum(anomaly_sidecar_series_not_ready{q})", "Series with too little history to be scored yet.", steps=((None, "green"), (1, "orange"))), 4, 4)
    b.add(stat("Version", f"count by (version) (anomaly_sidecar_build_info{proc})", "Sidecar versions running (value: how many sidecars).", legend="{{version}}"), 4, 4)
    b.add(
        timeseries(
            "Cycle duration (p90) and interval",
            targets(
                (f"histogram_quantile(0.9, sum by (le, query) (rate(anomaly_sidecar_cycle_duration_seconds_bucket{q}[$__rate_interval])))", "p90 {{query}}"),
                (f"max by (query) (anomaly_sidecar_query_interval_seconds{q})", "interval {{query}}"),
            ),
            "A cycle slower than its interval delays scores (AnomalySidecarCycleTooSlow).",
            unit="s",
            overrides=[{"matcher": {"id": "byRegexp", "options": "interval .*"}, "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "Query errors by reason",
            [target(f"sum by (query, reason) (rate(anomaly_sidecar_query_errors_total{q}[$__rate_interval]))", "{{query}}: {{reason}}")],
            "Failed cycles per second, by query and reason (AnomalySidecarQueryFailing).",
            unit="ops",
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "Time since last successful cycle",
            [target(f"time() - anomaly_sidecar_last_success_timestamp_seconds{q}", "{{query}} {{" + sl + "}}")],
            "Grows while a query is not scoring (AnomalySidecarNotScoring).",
            unit="s",
        ),
        12,
        8,
    )
    b.add(
        {
            "type": "state-timeline",
            "title": "Last cycle status",
            "description": "Whether the last cycle of each query succeeded.",
            "datasource": DS,
            "targets": [target(f"anomaly_sidecar_query_success{q}", "{{query}} {{" + sl + "}}")],
            "fieldConfig": {
                "defaults": {
                    "mappings": [{"type": "value", "options": {"0": {"text": "failed", "color": "red"}, "1": {"text": "ok", "color": "green"}}}],
                    "custom": {"fillOpacity": 80, "lineWidth": 0},
                    "thresholds": _thresholds((None, "red"), (1, "green")),
                },
                "overrides": [],
            },
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "legend": {"showLegend": False}},
        },
        12,
        8,
    )
    b.add(
        timeseries(
            "Series scored and not ready",
            targets(
                (f"sum by (query) (anomaly_sidecar_series_scored{q})", "scored {{query}}"),
                (f"sum by (query) (anomaly_sidecar_series_not_ready{q})", "not ready {{query}}"),
            ),
            "Series scored per cycle, and series still waiting for enough history (AnomalySidecarSeriesNotReady).",
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "Samples fetched",
            [target(f"sum by (query) (rate(anomaly_sidecar_samples_fetched_total{q}[$__rate_interval]))", "{{query}}")],
            "Samples read from Prometheus per second, by query.",
            unit="ops",
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "Detector fit duration",
            [target(f"anomaly_sidecar_fit_duration_seconds{q}", "{{query}} ({{detector}})")],
            "Duration of the last fit of each query's detector.",
            unit="s",
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "CPU and memory",
            targets(
                (f"rate(process_cpu_seconds_total{proc}[$__rate_interval])", "CPU {{" + sl + "}}"),
                (f"process_resident_memory_bytes{proc}", "memory {{" + sl + "}}"),
            ),
            "CPU cores used and resident memory of each sidecar process.",
            overrides=[{"matcher": {"id": "byRegexp", "options": "memory .*"}, "properties": [{"id": "unit", "value": "bytes"}, {"id": "custom.axisPlacement", "value": "right"}]}],
        ),
        24,
        8,
    )
    return _common(
        config,
        "health",
        "Anomaly sidecar / Health",
        "Is the sidecar scoring: cycle time against interval, errors, series counts, readiness, resources.",
        b,
        variables,
        [],
    )


def build_all(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File stem -> dashboard."""
    return {
        "anomaly-sidecar-overview": overview(config),
        "anomaly-sidecar-series": series(config),
        "anomaly-sidecar-health": health(config),
    }
