"""``anomaly-sidecar backtest``: reads the source, runs sidecar.backtest, prints and writes results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sidecar import backtest as bt
from sidecar.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sidecar.detectors import DetectorSpecError, available, build
from sidecar.durations import format_duration, parse_duration

#: CSV replays: history each fit sees and how often it is refitted (the default detector's
#: recommended settings; each file's own median step turns them into points).
CSV_HISTORY = "14d"
CSV_REFIT_EVERY = "6h"


def _usage(msg: str) -> int:
    print(f"anomaly-sidecar backtest: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _spec(text: str | None) -> Any:
    if text is None:
        return None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise bt.BadInput(f"--detector: not a name nor YAML/JSON: {exc}") from None
    return spec


def _alerting(args: argparse.Namespace) -> tuple[float, float]:
    threshold = bt.ALERT_THRESHOLD if args.alert_threshold is None else args.alert_threshold
    try:
        for_ = bt.ALERT_FOR if args.alert_for is None else parse_duration(args.alert_for)
    except ValueError as exc:
        raise bt.BadInput(f"--alert-for: {exc}") from None
    return threshold, for_


def cmd_backtest(args: argparse.Namespace) -> int:
    if bool(args.csv) == bool(args.config):
        return _usage("give either --config (with --start) to replay Prometheus history, or --csv FILE_OR_DIR")
    try:
        if args.csv:
            return _csv(args)
        return _prometheus(args)
    except bt.BadInput as exc:
        return _usage(str(exc))
    except DetectorSpecError as exc:
        path = ".".join(exc.path)
        return _usage(f"--detector{'.' + path if path else ''}: {exc}")


# -- CSV --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CsvJob:
    """Everything one file's backtest needs; picklable, so that files can go to worker processes."""

    spec: Any
    history: str
    refit_every: str
    threshold: float
    for_: float
    file_order: bool
    folder: bool
    output: str | None
    plot: str | None
    openmetrics: bool
    extra: dict[str, str]
    train: bt.Table | None


def _points(text: str, step: float, flag: str) -> int:
    """``--history`` / ``--refit-every``: a number of points, or a duration turned into points of this file."""
    if text.isdigit():
        n = int(text)
    else:
        try:
            n = int(round(parse_duration(text) / step))
        except ValueError as exc:
            raise bt.BadInput(f"{flag}: {exc} (or a number of points)") from None
    if n < 1:
        raise bt.BadInput(f"{flag} must be at least 1 point, got {text!r}")
    return n


def _csv(args: argparse.Namespace) -> int:
    src = Path(args.csv)
    if not src.exists():
        raise bt.BadInput(f"--csv {src}: no such file or folder")
    folder = src.is_dir()
    files = sorted(src.rglob("*.csv")) if folder else [src]
    if not files:
        raise bt.BadInput(f"--csv {src}: no .csv files in this folder")
    labels = bt.read_labels(args.labels) if args.labels else None
    threshold, for_ = _alerting(args)
    for flag, text in (("--history", args.history), ("--refit-every", args.refit_every)):
        if text is not None:
            _points(text, 1.0, flag)  # fail before reading any file
    spec = _spec(args.detector)
    _check_spec(spec)
    job = _CsvJob(
        spec=spec,
        history=args.history or CSV_HISTORY,
        refit_every=args.refit_every or CSV_REFIT_EVERY,
        threshold=threshold,
        for_=for_,
        file_order=args.file_order,
        folder=folder,
        output=args.output,
        plot=args.plot,
        openmetrics=bool(args.openmetrics),
        extra=_extra_labels(args.label),
        train=bt.read_csv(args.train, file_order=args.file_order) if args.train else None,
    )
    started = time.perf_counter()
    tasks = [(path.relative_to(src).as_posix() if folder else path.name, path) for path in files]
    tasks = [(rel, path, _windows_for(labels, rel) if labels is not None else None) for rel, path in tasks]
    jobs = min(args.jobs or os.cpu_count() or 1, len(tasks))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_score_file, [job] * len(tasks), *zip(*tasks)))
    else:
        results = [_score_file(job, *task) for task in tasks]
    reports = [r for r, _, _ in results]
    total = bt.Evaluation()
    for _, _, ev in results:
        if ev is not None:
            total.add(ev)
    elapsed = time.perf_counter() - started
    if args.openmetrics:
        om: dict[str, list[str]] = {}
        for _, lines, _ in results:
            for name, part in lines.items():
                om.setdefault(name, []).extend(part)
        n = bt.write_openmetrics(Path(args.openmetrics), om)
        print(f"wrote {n} samples to {args.openmetrics}", file=sys.stderr)
    summary = {"files": len(reports), "seconds": round(elapsed, 3), "alert_threshold": threshold, "alert_for_seconds": for_}
    if labels is not None:
        summary["evaluation"] = total.to_json()
    if args.format == "json":
        print(json.dumps({"summary": summary, "files": reports}, indent=2))
    else:
        _print_csv_reports(reports, summary, labels is not None)
    return EXIT_OK


def _score_file(
    job: _CsvJob, rel: str, path: Path, windows: list[tuple[float, float]] | None
) -> tuple[dict[str, Any], dict[str, list[str]], bt.Evaluation | None]:
    """Backtest one file: read, score causally, replay alerts, write outputs; runs in a worker."""
    table = bt.read_csv(path, file_order=job.file_order)
    step = float(np.median(np.diff(table.timestamps))) if table.timestamps.size > 1 else 1.0
    history, refit = _points(job.history, step, "--history"), _points(job.refit_every, step, "--refit-every")
    report: dict[str, Any] = {"file": rel, "rows": len(table.raw_timestamps), "history_points": history, "refit_every_points": refit}
    om: dict[str, list[str]] = {}
    if len(table.names) == 1:
        detector = build(job.spec)
        scores = bt.score_table(table, detector, history=history, refit_every=refit, train=job.train)
        score = scores.score[0]
        report["detector"] = detector.name
        if job.output:
            bt.write_scores_csv(_out_path(job.output, job.folder, rel, ".csv"), table, scores)
        if job.openmetrics:
            result = bt.SeriesResult({"file": rel}, table.timestamps, table.values[:, 0], scores, [])
            om = bt.openmetrics_lines([result], "backtest", detector.name, job.extra)
    else:
        score, contributions, name = _multivariate(table, job.spec, history, refit, job.train)
        report["detector"] = name
        report["columns"] = table.names
        if job.output:
            bt.write_multivariate_csv(_out_path(job.output, job.folder, rel, ".csv"), table, score, contributions)
    alerts = bt.alerts_from_scores(table.timestamps, score, job.threshold, job.for_)
    report.update(
        scored=int(np.sum(~np.isnan(score))),
        anomalous=int(np.sum(np.nan_to_num(score, nan=0) > job.threshold)),
        alerts=[a.to_json() for a in alerts],
    )
    ev = None
    if windows is not None:
        ev = bt.evaluate(alerts, windows)
        report["evaluation"] = ev.to_json()
    if job.plot and len(table.names) > 1:
        print(f"{rel}: no plot for multivariate files (see the contribution columns of --output)", file=sys.stderr)
    elif job.plot:
        from sidecar.plot import Panel, plot

        panel = Panel(f"{rel} ({report['detector']})", table.timestamps, table.values[:, 0], scores.score[0],
                      scores.expected[0], scores.lower[0], scores.upper[0], alerts, windows or ())
        plot([panel], _out_path(job.plot, job.folder, rel, ".png"), job.threshold)
    return report, om, ev


def _check_spec(spec: Any) -> None:
    """Fail on a bad --detector before any file is read: it must build as a univariate or a multivariate detector."""
    from sidecar.detectors.multivariate import build_multivariate

    try:
        build(spec)
    except DetectorSpecError as exc:
        name = spec.get("type") if isinstance(spec, dict) else spec
        if not isinstance(name, str) or name in available():
            raise
        try:
            build_multivariate(spec)
        except DetectorSpecError:
            raise exc from None


def _multivariate(table: bt.Table, spec: Any, history: int, refit: int, train: bt.Table | None) -> tuple[np.ndarray, np.ndarray, str]:
    from sidecar.detectors.multivariate import build_multivariate, replay_multivariate

    det = build_multivariate(spec)
    if train is not None:
        if train.names != table.names:
            raise bt.BadInput(f"{train.path}: columns {train.names} differ from {table.path}: {table.names}")
        result = det.fit(train.values).score(table.values)
    else:
        result = replay_multivariate(det, table.values, history=history, refit_every=refit)
    return np.asarray(result.score, dtype=float), np.asarray(result.contributions, dtype=float), det.name


def _out_path(out: str, folder: bool, rel: str, suffix: str) -> Path:
    if not folder:
        return Path(out)
    return (Path(out) / rel).with_suffix(suffix)


def _windows_for(labels: dict[str, list[tuple[float, float]]], rel: str) -> list[tuple[float, float]] | None:
    if rel in labels:
        return labels[rel]
    matches = [k for k in labels if k.endswith("/" + rel) or rel.endswith("/" + k)]
    return labels[matches[0]] if len(matches) == 1 else None


def _extra_labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise bt.BadInput(f"--label {pair!r}: expected KEY=VALUE with a label name as KEY")
        out[key] = value
    return out


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.2f}%" if d else "-"


def _print_csv_reports(reports: list[dict[str, Any]], summary: dict[str, Any], labelled: bool) -> None:
    width = max(len(r["file"]) for r in reports)
    head = f"{'file':<{width}}  {'rows':>7}  {'anomalous':>10}  {'alerts':>6}"
    if labelled:
        head += f"  {'windows':>8}  {'false alerts':>12}  {'delay':>8}"
    print(head)
    for r in reports:
        line = f"{r['file']:<{width}}  {r['rows']:>7}  {_pct(r['anomalous'], r['scored']):>10}  {len(r['alerts']):>6}"
        ev = r.get("evaluation")
        if ev:
            delay = format_duration(ev["median_delay_seconds"]) if ev["median_delay_seconds"] is not None else "-"
            line += f"  {ev['detected_windows']:>3}/{ev['windows']:<4}  {ev['false_alerts']:>12}  {delay:>8}"
        elif labelled:
            line += f"  {'(no labels for this file)':>30}"
        print(line)
    print(
        f"\n{summary['files']} file(s) in {summary['seconds']:.2f} s; alerts: score > {summary['alert_threshold']:g} "
        f"for {format_duration(summary['alert_for_seconds'])}"
    )
    ev = summary.get("evaluation")
    if ev:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        delay = format_duration(ev["median_delay_seconds"]) if ev["median_delay_seconds"] is not None else "-"
        print(
            f"events: {ev['detected_windows']}/{ev['windows']} windows detected, {ev['false_alerts']} false alert(s) of {ev['alerts']}; "
            f"precision {f(ev['precision'])}, recall {f(ev['recall'])}, F1 {f(ev['f1'])}, median detection delay {delay}"
        )


# -- Prometheus ------------------------------------------------------------------------------
def _prometheus(args: argparse.Namespace) -> int:
    from sidecar.cli import _client, _load
    from sidecar.prometheus import PrometheusClient, QueryError

    if not args.start:
        raise bt.BadInput("--start is required with --config (e.g. --start now-7d)")
    config = _load(args, args.config)
    now = time.time()
    start, end = bt.parse_time(args.start, now), bt.parse_time(args.end, now)
    if not start < end:
        raise bt.BadInput(f"--start ({args.start}) must be before --end ({args.end})")
    queries = config.queries
    if args.query:
        unknown = [q for q in args.query if q not in {s.name for s in queries}]
        if unknown:
            raise bt.BadInput(f"--query {', '.join(unknown)}: not in {args.config} (queries: {', '.join(s.name for s in queries)})")
        queries = tuple(s for s in queries if s.name in args.query)
    threshold, for_ = _alerting(args)
    extra = _extra_labels(args.label)
    client = _client(config, PrometheusClient)
    out: list[dict[str, Any]] = []
    panels = []
    om: dict[str, list[str]] = {}
    failed = False
    for spec in queries:
        entry: dict[str, Any] = {"query": spec.name, "detector": spec.detector_name, "step": spec.step, "history_points": spec.history_points, "refit_every_points": bt.refit_points(spec)}
        try:
            results = bt.backtest_query(spec, client, start, end, threshold=threshold, for_=for_)
        except QueryError as exc:
            entry["error"] = f"{exc.reason}: {exc}"
            failed = True
            out.append(entry)
            continue
        entry["series"] = [
            {"labels": r.labels, "points": r.points, "anomalous": r.anomalous, "alerts": [a.to_json() for a in r.alerts]} for r in results
        ]
        out.append(entry)
        if args.openmetrics:
            for name, lines in bt.openmetrics_lines(results, spec.name, spec.detector_name, extra).items():
                om.setdefault(name, []).extend(lines)
        if args.plot:
            from sidecar.plot import Panel

            for r in results:
                s = r.scores
                title = f"{spec.name} {{{', '.join(f'{k}={v}' for k, v in sorted(r.labels.items()))}}} ({spec.detector_name})"
                panels.append((float(np.nan_to_num(s.score[0], nan=0).max(initial=0)), Panel(title, r.t, r.value, s.score[0], s.expected[0], s.lower[0], s.upper[0], r.alerts)))
        if args.output:
            _write_long_csv(Path(args.output), spec.name, results, append=len(out) > 1)
    client.close()
    if args.openmetrics:
        n = bt.write_openmetrics(Path(args.openmetrics), om)
        print(f"wrote {n} samples to {args.openmetrics}", file=sys.stderr)
    if args.plot and panels:
        from sidecar.plot import plot

        top = [p for _, p in sorted(panels, key=lambda x: -x[0])[:6]]
        plot(top, Path(args.plot), threshold)
    if args.format == "json":
        print(json.dumps({"start": bt._iso(start), "end": bt._iso(end), "alert_threshold": threshold, "alert_for_seconds": for_, "queries": out}, indent=2))
    else:
        _print_query_reports(out, start, end, threshold, for_)
    return EXIT_FAILED if failed else EXIT_OK


def _write_long_csv(path: Path, query: str, results: list[bt.SeriesResult], append: bool) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", newline="") as f:
        w = csv.writer(f)
        if not append:
            w.writerow(["query", "series", "timestamp", "value", "score", "expected", "lower", "upper"])
        for r in results:
            series = ",".join(f'{k}="{v}"' for k, v in sorted(r.labels.items()))
            s = r.scores
            for i in np.flatnonzero(~np.isnan(s.score[0])).tolist():
                w.writerow([query, "{" + series + "}", f"{r.t[i]:.3f}", *(repr(float(a[i])) for a in (r.value, s.score[0], s.expected[0], s.lower[0], s.upper[0]))])


def _print_query_reports(out: list[dict[str, Any]], start: float, end: float, threshold: float, for_: float) -> None:
    print(f"backtest {bt._iso(start)} .. {bt._iso(end)}; alerts: score > {threshold:g} for {format_duration(for_)}")
    for q in out:
        print(f"\n{q['query']} (detector {q['detector']}, step {format_duration(q['step'])}, history {q['history_points']} points, refit every {q['refit_every_points']} point(s))")
        if "error" in q:
            print(f"  FAILED: {q['error']}")
            continue
        if not q["series"]:
            print("  no series returned for this period")
            continue
        rows = []
        for s in sorted(q["series"], key=lambda s: (-len(s["alerts"]), -s["anomalous"])):
            name = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s["labels"].items())) + "}"
            when = "; ".join(f"{a['fired']} (peak {a['peak_score']})" for a in s["alerts"][:3]) + (" ..." if len(s["alerts"]) > 3 else "")
            rows.append((name, str(s["points"]), f"{s['anomalous']} ({_pct(s['anomalous'], s['points'])})", str(len(s["alerts"])), when))
        head = ("series", "points", "anomalous", "alerts", "fired at")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, *rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        pts = sum(s["points"] for s in q["series"])
        anom = sum(s["anomalous"] for s in q["series"])
        n_alerts = sum(len(s["alerts"]) for s in q["series"])
        print(f"  total: {len(q['series'])} series, {pts} points, {anom} anomalous ({_pct(anom, pts)}), {n_alerts} alert(s)")


