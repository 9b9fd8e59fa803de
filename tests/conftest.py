"""Shared fixtures: a real Prometheus holding model-serving history that the tests control."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from servers import Prometheus, openmetrics

STEP = 15.0
HISTORY = 2 * 3600.0


@dataclass
class History:
    prometheus: Prometheus
    end: float  # unix time of the last backfilled sample
    spike_model: str = "m4"


def model_history(end: float, seed: int = 0) -> str:
    """Two hours of model-serving metrics at 15 s, ending at ``end``.

    - model_latency_seconds{model=m1..m4}: ~0.2 s with noise; m4 jumps to 0.8 s for the
      last three minutes (the injected anomaly).
    - model_requests_total{model=m1,status=200}: a counter at ~10 req/s that resets to 0
      an hour ago (a pod restart).
    - model_gpu_utilization{model=m1}: noisy gauge with a 20-minute scrape gap.
    - dup_a / dup_b: two metrics with identical labels (a query for both is ambiguous).
    """
    rng = np.random.default_rng(seed)
    ts = np.arange(end - HISTORY, end + 1e-6, STEP)
    samples = []
    common = {"job": "model-server", "namespace": "serving", "pod": "model-0"}
    for model in ("m1", "m2", "m3", "m4"):
        values = 0.2 + rng.normal(0, 0.005, ts.size)
        if model == "m4":
            values[ts > end - 180] = 0.8
        samples += [("model_latency_seconds", {**common, "model": model, "instance": "10.0.0.1:8000"}, v, t) for v, t in zip(values, ts)]
    count = np.cumsum(10 * STEP + rng.normal(0, 5, ts.size))
    count -= np.where(ts >= end - 3600, count[np.searchsorted(ts, end - 3600)] - 3.0, 0)  # reset to ~3
    samples += [("model_requests_total", {**common, "model": "m1", "status": "200"}, v, t) for v, t in zip(count, ts)]
    gpu = 60 + rng.normal(0, 2, ts.size)
    keep = ~((ts > end - 5400) & (ts < end - 4200))
    samples += [("model_gpu_utilization", {**common, "model": "m1"}, v, t) for v, t, k in zip(gpu, ts, keep) if k]
    samples += [(name, {"model": "m1"}, 1.0, t) for name in ("dup_a", "dup_b") for t in ts]
    return openmetrics(samples, {"model_requests_total": "counter"})


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> History:
    """A Prometheus (module-wide) with two hours of history ending a second ago."""
    workdir = tmp_path_factory.mktemp("prom")
    end = float(np.floor(time.time())) - 1
    prom = Prometheus(workdir)
    prom.backfill(model_history(end))
    prom.start()
    yield History(prom, end)
    prom.stop()
