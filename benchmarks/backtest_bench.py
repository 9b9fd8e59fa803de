"""Backtest speed: one 20,000-point CSV and a folder of 60, next to a windowed-Gaussian scorer.

    python benchmarks/backtest_bench.py [--files 60] [--points 20000] [--detector SPEC]

Writes synthetic 5-minute series (daily cycle, noise, a few anomalies) to a temporary
folder, then times in one run: `anomaly-sidecar backtest --csv` on one file and on the
folder (CSV reading, causal replay with the default settings, alert replay, CSV writing),
and a plain vectorised windowed-Gaussian scorer over the same files (CSV reading with
numpy, trailing mean/std by cumulative sums, Gaussian tail). The ratio is what to compare:
the machine is shared.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtr


def write_files(folder: Path, files: int, points: int) -> list[Path]:
    rng = np.random.default_rng(0)
    t = 1_500_000_000 + 300 * np.arange(points)
    stamps = np.datetime_as_string(t.astype("datetime64[s]")).astype(object)
    stamps = [s.replace("T", " ") for s in stamps]
    paths = []
    for k in range(files):
        v = 100 + 20 * np.sin(2 * np.pi * np.arange(points) / 288 + k) + rng.normal(0, 3, points)
        for at in rng.integers(points // 5, points, 3):
            v[at : at + 12] += rng.choice([-1, 1]) * 40
        p = folder / f"group{k % 4}" / f"series{k:03d}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("timestamp,value\n" + "".join(f"{s},{x:.4f}\n" for s, x in zip(stamps, v)))
        paths.append(p)
    return paths


def gaussian_baseline(paths: list[Path], window: int = 6400) -> float:
    """Trailing-window Gaussian tail score, vectorised per file (the NAB-style baseline)."""
    t0 = time.perf_counter()
    for p in paths:
        data = np.genfromtxt(p, delimiter=",", skip_header=1, usecols=1)
        c1 = np.concatenate([[0], np.cumsum(data)])
        c2 = np.concatenate([[0], np.cumsum(data * data)])
        i = np.arange(1, data.size)
        lo = np.maximum(0, i - window)
        n = i - lo
        mean = (c1[i] - c1[lo]) / n
        var = np.maximum((c2[i] - c2[lo]) / n - mean**2, 1e-12)
        score = 1 - ndtr(-np.abs(data[1:] - mean) / np.sqrt(var)) * 2
        np.savetxt(p.with_suffix(".gauss"), score, fmt="%.5f")
    return time.perf_counter() - t0


def backtest(target: Path, out: Path, detector: str | None) -> float:
    args = [sys.executable, "-m", "sidecar", "backtest", "--csv", str(target), "--output", str(out)]
    if detector:
        args += ["--detector", detector]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--points", type=int, default=20_000)
    p.add_argument("--detector", help="detector spec (default: the default detector)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        paths = write_files(folder, args.files, args.points)
        one = backtest(paths[0], Path(tmp) / "one.csv", args.detector)
        many = backtest(folder, Path(tmp) / "out", args.detector)
        gauss = gaussian_baseline(paths)
        print(f"{args.files} files x {args.points} points (5-minute steps), detector: {args.detector or 'default'}")
        print(f"  backtest of one file (whole command, incl. start-up)   {one:6.2f} s")
        print(f"  backtest of the folder                                 {many:6.2f} s   ({many / args.files * 1000:.0f} ms per file)")
        print(f"  windowed-Gaussian scorer over the same files           {gauss:6.2f} s")
        print(f"  ratio folder backtest / Gaussian scorer                {many / gauss:6.2f}")


if __name__ == "__main__":
    main()
