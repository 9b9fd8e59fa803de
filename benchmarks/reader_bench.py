"""Cycle cost against a real Prometheus: incremental reads vs re-reading the whole history.

    python benchmarks/reader_bench.py [--series 2000] [--hours 6]

Backfills N series of 15 s data into a Prometheus started on a free loopback port, then
times one scoring cycle of `robust_zscore` over them two ways, side by side: the sidecar's
incremental cycle (reads only the steps since the last cycle) and a cycle that re-reads the
whole history each time. Needs the Debian packages prometheus (and promtool).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Prometheus  # noqa: E402  (the test suite's real-Prometheus helper)

from sidecar.config import parse_config  # noqa: E402
from sidecar.prometheus import PrometheusClient  # noqa: E402
from sidecar.scoring import QueryRunner  # noqa: E402


def backfill_text(n: int, hours: float, end: float) -> str:
    rng = np.random.default_rng(0)
    ts = np.arange(end - hours * 3600, end + 1e-6, 15.0)
    lines = ["# HELP bench_latency_seconds bench", "# TYPE bench_latency_seconds gauge"]
    values = 0.2 + rng.normal(0, 0.01, (n, ts.size))
    for i in range(n):
        lbl = f'bench_latency_seconds{{pod="pod-{i}",model="m{i % 20}"}} '
        lines.extend(f"{lbl}{v:.5f} {t:.0f}" for v, t in zip(values[i], ts))
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=2000)
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--cycles", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        end = float(np.floor(time.time())) - 1
        prom = Prometheus(Path(tmp))
        t0 = time.perf_counter()
        prom.backfill(backfill_text(args.series, args.hours, end))
        prom.start()
        print(f"{args.series} series x {args.hours:g} h at 15 s in Prometheus (backfilled in {time.perf_counter() - t0:.0f} s)")
        try:
            cfg = parse_config(
                {
                    "prometheus": {"url": prom.url, "timeout": "120s"},
                    "queries": [{"name": "b", "expr": "bench_latency_seconds", "interval": "30s", "step": "15s", "history": f"{args.hours:g}h", "max_series": 100000, "refit_interval": "0s"}],
                }
            )
            client = PrometheusClient(cfg.prometheus)
            spec = cfg.queries[0]
            clock = Clock(end - 30 * (args.cycles + 1))
            incremental = QueryRunner(spec, client, clock=clock)
            tracemalloc.start()
            first = time.perf_counter()
            incremental.run()
            first = time.perf_counter() - first
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            inc, full = [], []
            for _ in range(args.cycles):
                clock.now += 30
                t0 = time.perf_counter()
                view = incremental.run()
                inc.append(time.perf_counter() - t0)
                fresh = QueryRunner(spec, client, clock=clock)  # no buffer: reads the whole history
                t0 = time.perf_counter()
                fresh.run()
                full.append(time.perf_counter() - t0)
            assert view.success and view.series_scored == args.series, view
            mi, mf = float(np.median(inc)), float(np.median(full))
            print(f"  first cycle: peak memory (tracemalloc)  {peak / 2**20:7.0f} MiB (reads the whole history, fits {spec.detector_name})")
            print(f"  incremental cycle, median of {args.cycles}          {mi:7.2f} s")
            print(f"  re-reading the history, median of {args.cycles}     {mf:7.2f} s   ({mf / mi:.1f}x the incremental cycle)")
        finally:
            prom.stop()


if __name__ == "__main__":
    main()
