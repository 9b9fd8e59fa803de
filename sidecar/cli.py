"""The ``anomaly-sidecar`` command: run, score, check-config, detectors.

Exit status: 0 success; 1 a runtime failure (a query failed in ``score``, the port is
taken); 2 bad input (config errors, bad flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from typing import Any, Sequence

from sidecar import __version__
from sidecar.config import Config, ConfigError, load_config

log = logging.getLogger("sidecar")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anomaly-sidecar",
        description="Score model-serving metrics from Prometheus for anomalies and publish the scores as gauges.",
    )
    p.add_argument("--version", action="version", version=f"anomaly-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add_common(sp: argparse.ArgumentParser, *, config_flag: bool = True) -> None:
        if config_flag:
            sp.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")
        sp.add_argument("--prometheus-url", metavar="URL", help="override prometheus.url of the config")
        sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sp.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])

    run = sub.add_parser("run", help="run the sidecar: score every query on its interval, serve /metrics")
    add_common(run)
    run.add_argument("--listen", metavar="HOST:PORT", help="override server.listen (default 0.0.0.0:9710)")

    score = sub.add_parser("score", help="run one scoring cycle of every query, print the scores, exit")
    add_common(score)
    score.add_argument("--format", default="table", choices=["table", "json"])

    check = sub.add_parser("check-config", help="validate a config file (and its expressions, if Prometheus answers)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--prometheus-url", metavar="URL", help="override prometheus.url of the config")
    check.add_argument("--offline", action="store_true", help="do not ask Prometheus to parse the expressions")

    sub.add_parser("detectors", help="list the available detectors with their parameters and defaults")

    bt = sub.add_parser(
        "backtest",
        help="replay a detector causally over the past: Prometheus history or CSV files",
        description="Replay causally what the sidecar would have scored and paged. From Prometheus: "
        "--config FILE --start TIME --end TIME [--query NAME]. From files: --csv FILE_OR_DIR [--detector SPEC] [--output OUT].",
    )
    src = bt.add_argument_group("from Prometheus")
    src.add_argument("--config", "-c", metavar="FILE", help="sidecar config whose queries are replayed")
    src.add_argument("--query", action="append", metavar="NAME", help="only this query (repeatable)")
    src.add_argument("--start", metavar="TIME", help="now-7d, 2026-11-01T00:00:00Z or unix seconds")
    src.add_argument("--end", metavar="TIME", default="now")
    src.add_argument("--prometheus-url", metavar="URL", help="override prometheus.url of the config")
    files = bt.add_argument_group("from CSV files")
    files.add_argument("--csv", metavar="FILE_OR_DIR", help="timestamp,value[,value...] with a header; a folder: every *.csv below it")
    files.add_argument("--detector", metavar="SPEC", help="a name or inline YAML/JSON, e.g. '{type: robust_zscore, sensitivity: 4}'")
    files.add_argument("--train", metavar="FILE", help="fit on this file (same columns) before scoring --csv, no refits")
    files.add_argument("--history", metavar="DURATION|POINTS", help="history each fit sees (default: 14d)")
    files.add_argument("--refit-every", metavar="DURATION|POINTS", help="how often the detector is refitted (default: 6h)")
    files.add_argument("--jobs", type=int, metavar="N", help="files scored in parallel (default: one per CPU)")
    files.add_argument("--file-order", action="store_true", help="accept repeated or backward timestamps (DST changes) and score rows in file order")
    files.add_argument("--labels", metavar="FILE", help='anomaly windows {"path.csv": [["start", "end"], ...]}: precision, recall, delay')
    out = bt.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="OUT", help="scores as CSV (a folder when --csv is a folder)")
    out.add_argument("--plot", metavar="OUT.png", help="a picture of value, band, score and alerts (a folder when --csv is a folder)")
    out.add_argument("--openmetrics", metavar="OUT.om", help="scores as OpenMetrics for promtool tsdb create-blocks-from openmetrics")
    out.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra label on --openmetrics series (repeatable)")
    out.add_argument("--format", default="table", choices=["table", "json"])
    out.add_argument("--alert-threshold", type=float, default=None, metavar="SCORE", help="alert when the score is above this (default: the shipped rule's 1)")
    out.add_argument("--alert-for", default=None, metavar="DURATION", help="for this long (default: the shipped rule's 5m)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "score":
            return cmd_score(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "detectors":
            return cmd_detectors()
        if args.command == "backtest":
            from sidecar.backtest_cli import cmd_backtest

            return cmd_backtest(args)
    except ConfigError as exc:
        print(f"anomaly-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(args.command)


def _load(args: argparse.Namespace, path: str) -> Config:
    config = load_config(path)
    return config.with_overrides(prometheus_url=args.prometheus_url, listen=getattr(args, "listen", None))


# -- run ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    from sidecar.exporter import Exporter, SelfCollector
    from sidecar.logs import kv, setup_logging
    from sidecar.prometheus import PrometheusClient
    from sidecar.scheduler import Scheduler
    from sidecar.scoring import QueryRunner
    from sidecar.snapshot import SnapshotStore
    from sidecar.telemetry import Telemetry

    config = _load(args, args.config)
    setup_logging(args.log_level, args.log_format)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    telemetry = Telemetry(registry)
    client = _client(config, PrometheusClient)
    runners = [QueryRunner(q, client, telemetry=telemetry) for q in config.queries]
    store = SnapshotStore(r.view for r in runners)
    registry.register(SelfCollector(store))
    try:
        exporter = Exporter(store, registry, config.server.listen).start()
    except OSError as exc:
        log.error("cannot listen", extra=kv(address=config.server.listen, error=exc.strerror or exc))
        return EXIT_FAILED
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "started",
        extra=kv(version=__version__, prometheus=config.prometheus.url, queries=len(runners), listen=exporter.address),
    )
    for q in config.queries:
        log.info("query configured", extra=kv(query=q.name, schedule=q.describe()))
    scheduler = Scheduler(runners, store, stop=stop).start()
    while not stop.wait(1.0):
        pass
    scheduler.stop()
    exporter.stop()
    client.close()
    log.info("stopped")
    return EXIT_OK


def _client(config: Config, cls: Any) -> Any:
    import requests

    session = requests.Session()
    # One pooled connection per query thread, so that queries never queue for a socket.
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, len(config.queries)))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return cls(config.prometheus, session=session)


# -- score -------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    from sidecar.logs import setup_logging
    from sidecar.prometheus import PrometheusClient
    from sidecar.scoring import QueryRunner

    config = _load(args, args.config)
    setup_logging(args.log_level, args.log_format)
    client = _client(config, PrometheusClient)
    results = []
    for spec in config.queries:
        runner = QueryRunner(spec, client)
        view = runner.run()
        results.append((view, runner.published()))
    client.close()
    if args.format == "json":
        print(json.dumps({"queries": [_score_json(v, s) for v, s in results]}, indent=2))
    else:
        _print_score_table(results)
    return EXIT_OK if all(v.success for v, _ in results) else EXIT_FAILED


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def _score_json(view: Any, series: list[tuple[dict[str, str], list[float]]]) -> dict[str, Any]:
    return {
        "name": view.name,
        "detector": view.detector,
        "success": view.success,
        "error": view.error,
        "error_reason": view.error_reason,
        "series_returned": view.series_returned,
        "series_scored": view.series_scored,
        "series_not_ready": view.series_not_ready,
        "series": [
            {"labels": labels, **{k: _num(v) for k, v in zip(("score", "value", "expected", "lower", "upper"), out)}}
            for labels, out in series
        ],
    }


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.4g}"


def _print_score_table(results: list[tuple[Any, list[tuple[dict[str, str], list[float]]]]]) -> None:
    header = ("query", "series", "value", "expected", "lower", "upper", "score", "")
    rows: list[tuple[str, ...]] = []
    for view, series in results:
        for labels, (score, value, expected, lower, upper) in sorted(series, key=lambda s: -(s[1][0] if not math.isnan(s[1][0]) else -1)):
            series_txt = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
            flag = "ANOMALOUS" if score > 1 else ""
            rows.append((view.name, series_txt, _fmt(value), _fmt(expected), _fmt(lower), _fmt(upper), _fmt(score), flag))
    if rows:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        print()
    for view, _ in results:
        if view.success:
            print(
                f"{view.name}: ok, {view.series_returned} series returned, {view.series_scored} scored, "
                f"{view.series_not_ready} not ready (too little history), {view.series_anomalous} anomalous"
            )
        else:
            print(f"{view.name}: FAILED ({view.error_reason}): {view.error}")


# -- check-config ------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from sidecar.prometheus import PrometheusClient, QueryError

    config = _load(args, args.file)
    print(f"{args.file}: config OK, {len(config.queries)} quer{'y' if len(config.queries) == 1 else 'ies'}")
    for q in config.queries:
        print(f"  {q.name}: {q.describe()}")
    if args.offline:
        return EXIT_OK
    client = PrometheusClient(config.prometheus.model_copy(update={"retries": 0}))
    problems = []
    for i, q in enumerate(config.queries):
        try:
            client.check_expression(q.expr)
        except QueryError as exc:
            if exc.reason in ("bad_data", "execution"):
                problems.append((f"queries[{i}].expr", str(exc)))
                continue
            print(f"Prometheus at {config.prometheus.url} not usable ({exc}): expressions not checked")
            return EXIT_OK
    client.close()
    if problems:
        raise ConfigError(problems, args.file)
    print(f"expressions OK: Prometheus at {config.prometheus.url} parsed all {len(config.queries)}")
    return EXIT_OK


# -- detectors ---------------------------------------------------------------------------
def cmd_detectors() -> int:
    from sidecar.detectors import DEFAULT_DETECTOR, available

    for name, cls in available().items():
        default = " (default)" if name == DEFAULT_DETECTOR else ""
        print(f"{name}{default}  [{cls.family}]")
        if cls.summary:
            print(f"    {cls.summary}")
        for param, value in cls.param_defaults().items():
            doc = cls.param_docs.get(param, "")
            print(f"    {param} = {value!r}".ljust(34) + f"  {doc}")
        print()
    return EXIT_OK
