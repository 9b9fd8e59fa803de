"""Detector cost: one batched fit+score over N series vs the same work one series at a time.

    python benchmarks/detectors_bench.py [--series 10000] [--points 720]

Prints, per detector, the batched time for all series, the per-series loop time (measured
on a sample and scaled), their ratio, and the peak extra memory of the batched call.
Both are measured in the same run, so the ratio holds on a noisy shared machine.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from sidecar.detectors import available, build

PARAMS = {"static_threshold": {"max": 4.0}, "seasonal": {"period": "1h", "bins": 60}}


def spec(name: str) -> dict:
    return {"type": name, **PARAMS.get(name, {})}


def run(name: str, X: np.ndarray, t: np.ndarray, n_new: int) -> float:
    t0 = time.perf_counter()
    build(spec(name)).fit(X[:, :-n_new], t[:-n_new]).score(X[:, -n_new:], t[-n_new:])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--points", type=int, default=720, help="history points per series (720 = 6h at 30s)")
    p.add_argument("--sample", type=int, default=200, help="series timed one at a time, then scaled")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(100, 5, (args.series, args.points + 2))
    X[rng.random(X.shape) < 0.01] = np.nan
    t = 30.0 * np.arange(X.shape[1]) + 1.7e9
    print(f"{args.series} series x {args.points} points of history, 2 new points scored; numpy {np.__version__}")
    print(f"{'detector':<18}{'batched':>10}{'per-series loop':>18}{'ratio':>8}{'peak extra memory':>20}")
    for name in available():
        run(name, X[:50], t, 2)  # warm-up
        batched = run(name, X, t, 2)
        t0 = time.perf_counter()
        for i in range(args.sample):
            run(name, X[i : i + 1], t, 2)
        loop = (time.perf_counter() - t0) * args.series / args.sample
        tracemalloc.start()
        run(name, X, t, 2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:<18}{batched:>9.3f}s{loop:>17.2f}s{loop / batched:>7.0f}x{peak / 2**20:>16.0f} MiB")


if __name__ == "__main__":
    main()
