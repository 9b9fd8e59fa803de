"""Every query of a Grafana dashboard (panels, variables, annotations), and how to run one on Prometheus.

Grafana expands its macros and variables before it sends a query; :func:`expand` does the same
with fixed values so that the queries can be syntax-checked by promtool and run against a real
Prometheus by the tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from deploy_assets import DASHBOARD_DIR

#: Grafana's global macros, with the values a 1-hour dashboard at a 15 s interval would get.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$__range_s": "3600"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel <title> / <refId>", "variable <name>", "annotation <name>"
    expr: str
    instant: bool = False

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def panel_queries(name: str, board: dict[str, Any]) -> list[Query]:
    out = []
    for panel in all_panels(board):
        for t in panel.get("targets", []):
            out.append(Query(name, f"panel {panel['title']!r} / {t['refId']}", t["expr"], bool(t.get("instant"))))
    for ann in board.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append(Query(name, f"annotation {ann['name']!r}", ann["expr"]))
    return out


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board.get("templating", {}).get("list", [])


def variable_queries(name: str, board: dict[str, Any]) -> list[tuple[Query, str]]:
    """(series selector as a Query, label) of every label_values() variable."""
    out = []
    for var in variables(board):
        if var["type"] != "query":
            continue
        m = LABEL_VALUES.match(var["query"] if isinstance(var["query"], str) else var["query"]["query"])
        assert m, f"{name}: variable {var['name']} is not label_values(...)"
        out.append((Query(name, f"variable {var['name']}", m["selector"] or ""), m["label"]))
    return out


def regex_escape(value: str) -> str:
    """A value inside a PromQL =~"..." string, escaped as Grafana does: regex metacharacters get a (doubled) backslash."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def expand(expr: str, values: dict[str, str] | None = None) -> str:
    """Grafana's expansion: macros, then ``$var`` / ``${var}`` (unknown variables become ``.*``)."""
    for macro, value in sorted(MACROS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(macro, value)
    values = values or {}

    def var(m: re.Match[str]) -> str:
        return regex_escape(values[m[1]]) if m[1] in values else ".*"

    return re.sub(r"\$\{?(\w+)\}?", var, expr)
