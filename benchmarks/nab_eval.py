"""NAB figures of a detector, from the product's own backtest, scored by the shared NAB scorer.

    python benchmarks/nab_eval.py                       # the default detector, with its default settings
    python benchmarks/nab_eval.py --detector '{type: robust_zscore, sensitivity: 4}'
    python benchmarks/nab_eval.py --baseline            # and the scorer's windowed-Gaussian baseline

Runs ``anomaly-sidecar backtest --csv DATA --output OUT`` (causal replay with the backtest's
default history and refit cadence, unless --history / --refit-every say otherwise), then the
shared scorer (../shared/eval/nab_score.py) on OUT twice: with the threshold swept over the
corpus, and at the product's fixed alert threshold 1 (the band edge). Prints the NAB scores
(standard, low-FP, low-FN), event-level F1, windows hit, false-alarm rows and wall times.
Exits 0 with a message when the data folder or the scorer is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PROFILES = (("standard", "std"), ("reward_low_FP_rate", "low-FP"), ("reward_low_FN_rate", "low-FN"))


def run_scorer(scorer: Path, data: Path, labels: Path, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(scorer), "--data", str(data), "--labels", str(labels), "--json", out.name, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"scorer failed ({' '.join(cmd)}):\n{proc.stderr}")
        return json.load(open(out.name))


def row(label: str, kind: str, res: dict) -> str:
    nab = "  ".join(f"{res['nab'][p]['normalized']:7.2f}" for p, _ in PROFILES)
    ev, std = res["event"], res["nab"]["standard"]
    windows = f"{std['tp_windows']}/{std['tp_windows'] + std['fn_windows']}"
    return f"{label:<26}{kind:<14}{nab}   {ev['f1']:5.3f} {ev['precision']:5.3f} {ev['recall']:5.3f}   {windows:>7} {std['fp_rows']:6d}  {std['threshold']:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", help="registry name or inline YAML/JSON spec (default: the default detector)")
    p.add_argument("--history", help="passed to backtest (default: its default)")
    p.add_argument("--refit-every", help="passed to backtest (default: its default)")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "nab-dev" / "data")
    p.add_argument("--labels", type=Path, help="combined_windows.json (default: beside --data)")
    p.add_argument("--scorer", type=Path, default=SHARED / "eval" / "nab_score.py")
    p.add_argument("--out", type=Path, help="folder for the score CSVs (default: a temporary folder)")
    p.add_argument("--baseline", action="store_true", help="also score the scorer's gaussian-full baseline")
    p.add_argument("--per-file", action="store_true", help="per-file NAB raw scores")
    args = p.parse_args(argv)
    labels = args.labels or args.data.parent / "combined_windows.json"
    if not args.data.is_dir() or not labels.is_file() or not args.scorer.is_file():
        print(f"skipped: need the NAB data ({args.data}), labels ({labels}) and scorer ({args.scorer})")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="nab-scores-"))
    # NAB files are in local time: an hour repeats or steps back at DST changes (--file-order).
    cmd = [sys.executable, "-m", "sidecar", "backtest", "--csv", str(args.data), "--output", str(out), "--file-order", "--format", "json"]
    for flag, value in (("--detector", args.detector), ("--history", args.history), ("--refit-every", args.refit_every)):
        if value:
            cmd += [flag, value]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"backtest failed: {proc.stderr}")
    report = json.loads(proc.stdout)
    files = report["files"]
    swept = run_scorer(args.scorer, args.data, labels, ["--scores", str(out)])
    fixed = run_scorer(args.scorer, args.data, labels, ["--scores", str(out), "--threshold", "1"])
    name = files[0]["detector"]
    print(f"$ {' '.join(Path(c).name if c == sys.executable else c for c in cmd)}")
    print(
        f"{len(files)} files, {sum(f['rows'] for f in files)} rows, history {files[0]['history_points']} points and refit every "
        f"{files[0]['refit_every_points']} points at 5 minutes; backtest {took:.1f} s wall (incl. start-up)"
    )
    head = "  ".join(f"{n:>7}" for _, n in PROFILES)
    print(f"\n{'':<26}{'threshold':<14}{head}   eventF1  prec   rec   windows FProws  at")
    lines = [row(name, "swept", swept), row(name, "fixed at 1", fixed)]
    if args.baseline:
        lines += [
            row("gaussian-full (baseline)", "swept", run_scorer(args.scorer, args.data, labels, ["--baseline", "gaussian-full"])),
            row("gaussian-full (baseline)", "fixed at 1", run_scorer(args.scorer, args.data, labels, ["--baseline", "gaussian-full", "--threshold", "1"])),
        ]
    print("\n".join(lines))
    print("\nper category, standard / low-FP / low-FN (swept | fixed at 1):")
    for cat, d in swept["per_category"].items():
        if d["windows"]:
            f = fixed["per_category"][cat]
            print(f"  {cat:<24}{d['windows']:3d} windows " + " ".join(f"{d[k]:7.2f}" for k, _ in PROFILES) + "  |" + " ".join(f"{f[k]:7.2f}" for k, _ in PROFILES))
    if args.per_file:
        print("\nper file (swept): standard / low-FP / low-FN raw, windows hit, false-alarm rows")
        for r in swept["per_file"]:
            print(f"  {r['file']:<58}" + " ".join(f"{r[k]:8.3f}" for k, _ in PROFILES) + f"  {r['hit']}/{r['windows']}  {r['fp_rows']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
