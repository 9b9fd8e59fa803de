"""Self-monitoring instruments that accumulate across cycles (counters, histograms).

Point-in-time facts about the last cycle (series scored, last success) come from the
snapshot instead; see :class:`sidecar.exporter.SelfCollector`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.prometheus import REASONS

CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Telemetry:
    """The ``anomaly_sidecar_*`` instruments, registered in ``registry`` (a test passes its own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycle_duration = Histogram(
            "anomaly_sidecar_cycle_duration_seconds",
            "Time one scoring cycle of a query took: fetch, fit, score and publish.",
            ["query"],
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.query_errors = Counter(
            "anomaly_sidecar_query_errors",
            "Scoring cycles that failed, by reason.",
            ["query", "reason"],
            registry=registry,
        )
        self.samples_fetched = Counter(
            "anomaly_sidecar_samples_fetched",
            "Samples read from Prometheus.",
            ["query"],
            registry=registry,
        )
        self.fit_duration = Gauge(
            "anomaly_sidecar_fit_duration_seconds",
            "Time the last detector fit of a query took.",
            ["query", "detector"],
            registry=registry,
        )

    def init_query(self, query: str) -> None:
        """Create every child at zero so that rate() and increase() see the first error."""
        self.cycle_duration.labels(query)
        self.samples_fetched.labels(query)
        for reason in REASONS:
            self.query_errors.labels(query, reason)
