"""Finished results of each query's last cycle, rendered once, read by any number of scrapes.

A :class:`QueryView` is immutable and carries its ``anomaly_*`` samples already rendered in
the Prometheus text format, so a scrape concatenates strings instead of formatting 100,000
series (see benchmarks/exporter_bench.py). The :class:`SnapshotStore` swaps views atomically.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np

#: (metric name, help) of the published families, in the order of ``QueryView.chunks``.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("anomaly_score", "Anomaly score of the last scored point: 0 as expected, 1 at the edge of the expected band, above 1 anomalous."),
    ("anomaly_value", "Last observed value of the source series that was scored."),
    ("anomaly_expected", "Value the detector expected for that point."),
    ("anomaly_lower", "Lower edge of the expected band (score 1 there)."),
    ("anomaly_upper", "Upper edge of the expected band (score 1 there)."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def published_labels(source: Mapping[str, str], query: str, detector: str) -> dict[str, str]:
    """Source labels plus ``query`` and ``detector``; colliding source labels become ``exported_*``."""
    out = {k: v for k, v in source.items() if k != "__name__"}
    for key in ("query", "detector"):
        if key in out:
            out[f"exported_{key}"] = out.pop(key)
    out["query"] = query
    out["detector"] = detector
    return out


def label_text(labels: Mapping[str, str]) -> str:
    """``{a="1",b="2"}`` with text-format escaping, keys sorted."""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def format_values(values: np.ndarray) -> list[str]:
    """Floats as the text format writes them (``NaN``, ``+Inf``, shortest round-trip repr)."""
    out = [repr(v) for v in values.tolist()]
    bad = np.flatnonzero(~np.isfinite(values))
    for i in bad.tolist():
        v = values[i]
        out[i] = "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    return out


def render_samples(name: str, labels: list[str], values: np.ndarray) -> bytes:
    """One sample line per series, ``name{labels} value``, encoded once here, not per scrape."""
    return "".join([f"{name}{lbl} {v}\n" for lbl, v in zip(labels, format_values(values))]).encode()


@dataclass(frozen=True)
class QueryView:
    """What the last finished cycle of one query produced, for /metrics and the landing page."""

    name: str
    expr: str
    detector: str
    interval: float
    step: float = 0.0
    last_run: float | None = None  # wall-clock end of the last cycle
    last_success: float | None = None
    success: bool | None = None
    error: str | None = None
    error_reason: str | None = None
    duration: float | None = None
    series_returned: int = 0
    series_scored: int = 0
    series_not_ready: int = 0
    series_published: int = 0
    series_anomalous: int = 0
    #: Rendered samples of each family of FAMILIES, in that order.
    chunks: tuple[bytes, ...] = field(default=(b"",) * len(FAMILIES), repr=False)

    def finished(self, **changes: object) -> "QueryView":
        return replace(self, **changes)


def render_chunks(labels: list[str], outputs: np.ndarray) -> tuple[bytes, ...]:
    """``outputs`` rows: score, value, expected, lower, upper (FAMILIES order) for each label string."""
    return tuple(render_samples(name, labels, outputs[i]) for i, (name, _) in enumerate(FAMILIES))


@dataclass(frozen=True)
class Snapshot:
    version: int
    views: Mapping[str, QueryView]

    @property
    def ready(self) -> bool:
        """Every query has finished its first cycle (successfully or not)."""
        return all(v.last_run is not None for v in self.views.values())


class SnapshotStore:
    """Holds the latest view of every query; readers get an immutable :class:`Snapshot`."""

    def __init__(self, views: Iterable[QueryView]) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot(0, {v.name: v for v in views})

    def publish(self, view: QueryView) -> None:
        with self._lock:
            views = dict(self._snapshot.views)
            views[view.name] = view
            self._snapshot = Snapshot(self._snapshot.version + 1, views)

    def current(self) -> Snapshot:
        return self._snapshot
