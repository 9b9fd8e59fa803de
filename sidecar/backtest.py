"""Backtests: what a detector would have scored and paged, replayed causally over the past.

Two sources: a query's history in Prometheus (scored exactly as the live sidecar would
have, with its history window and refit cadence), or CSV files (`timestamp,value`, or
several value columns for a multivariate detector). Alerts are replayed with the shipped
rule's threshold and ``for:``; labelled anomaly windows give event-level precision, recall
and detection delay.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sidecar.config import QuerySpec
from sidecar.detectors import Detector, Scores
from sidecar.prometheus import PrometheusClient
from sidecar.replay import replay
from sidecar.scoring import COUNTER_SUFFIXES, counter_rates, series_key
from sidecar.snapshot import FAMILIES, label_text, published_labels

#: The shipped ModelMetricAnomalous rule (deploy/mixin/config.yaml: warning_score, anomalous_for);
#: a test keeps these equal.
ALERT_THRESHOLD = 1.0
ALERT_FOR = 300.0


class BadInput(ValueError):
    """A file or argument the backtest cannot use; the message names the file and line."""


# -- time ----------------------------------------------------------------------------------
_FRACTION = re.compile(r"\.(\d+)")


def iso_seconds(text: str) -> float:
    """Unix seconds of an ISO-8601 time; UTC when it names no zone. Raises ValueError.

    Normalised first so that Python 3.10 reads what 3.11 does: 'Z' and fractions of any length.
    """
    t = text.strip().replace("Z", "+00:00")
    t = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], t, count=1)
    dt = datetime.fromisoformat(t)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def parse_time(text: str, now: float) -> float:
    """Unix seconds from ``now``, ``now-7d``, an ISO-8601 time (UTC if no zone) or unix seconds."""
    from sidecar.durations import parse_duration

    s = text.strip()
    if s == "now":
        return now
    if s.startswith("now-"):
        return now - parse_duration(s[4:])
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return iso_seconds(s)
    except ValueError:
        raise BadInput(f"invalid time {text!r}: use now, now-7d, 2026-11-01T00:00:00Z or unix seconds") from None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


# -- CSV ------------------------------------------------------------------------------------
@dataclass
class Table:
    """A CSV as read: timestamps (unix seconds), their text, value column names and values."""

    path: Path
    timestamps: np.ndarray
    raw_timestamps: list[str]
    names: list[str]
    values: np.ndarray  # (n_rows, n_columns); NaN where a cell was empty


def _parse_timestamps(path: Path, col: list[str]) -> np.ndarray:
    try:
        return np.array(col, dtype=np.float64)  # unix seconds
    except ValueError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:  # fast path: naive ISO-8601, the common case ("2014-04-10 07:15:00")
            return np.array(col, dtype="datetime64[us]").astype(np.int64) / 1e6
        except (ValueError, Warning):
            pass
    out = np.empty(len(col))
    for i, text in enumerate(col):
        try:
            out[i] = iso_seconds(text)
        except ValueError:
            raise BadInput(f"{path}:{i + 2}: unparsable timestamp {text!r}: use ISO-8601 such as 2014-04-10 07:15:00, or unix seconds") from None
    return out


def _parse_values(path: Path, name: str, col: list[str]) -> np.ndarray:
    try:
        return np.array(col, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(col))
    for i, text in enumerate(col):
        t = text.strip()
        if t == "" or t.lower() in ("nan", "null", "none"):
            out[i] = np.nan
            continue
        try:
            out[i] = float(t)
        except ValueError:
            raise BadInput(f"{path}:{i + 2}: column {name!r}: not a number: {text!r}") from None
    return out


def read_csv(path: str | Path, *, file_order: bool = False) -> Table:
    """Read ``timestamp,<value>[,<value>...]`` with a header; raises BadInput naming file and line.

    Timestamps must increase. With ``file_order``, repeated or backward timestamps are
    accepted and the rows are scored in file order (public data sets written in local time
    repeat or skip an hour at DST changes).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"{path}: not a CSV text file: {exc}") from None
    if not rows:
        raise BadInput(f"{path}: empty file: expected a header such as timestamp,value")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2 or header[0].lower() != "timestamp":
        raise BadInput(f"{path}:1: no header: the first line must name the columns, e.g. timestamp,value (got {','.join(rows[0])!r})")
    names = header[1:]
    if len(set(header)) != len(header) or any(not n for n in names):
        raise BadInput(f"{path}:1: column names must be unique and not empty: {','.join(header)!r}")
    body = rows[1:]
    while body and not any(c.strip() for c in body[-1]):
        body.pop()  # trailing blank lines
    if not body:
        raise BadInput(f"{path}: no data rows after the header")
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise BadInput(f"{path}:{i + 2}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
    cols = list(zip(*body))
    raw = [c.strip() for c in cols[0]]
    ts = _parse_timestamps(path, raw)
    d = np.diff(ts)
    bad = np.flatnonzero(d <= 0)
    if bad.size and not file_order:
        i = int(bad[0])
        what = f"duplicated: {raw[i + 1]!r} again (line {i + 2})" if d[i] == 0 else f"not sorted: {raw[i + 1]!r} after {raw[i]!r} on line {i + 2}"
        raise BadInput(f"{path}:{i + 3}: timestamps {what}; --file-order scores rows in file order anyway (e.g. around DST changes)")
    values = np.column_stack([_parse_values(path, n, list(c)) for n, c in zip(names, cols[1:])])
    return Table(path, ts, raw, names, values)


# -- alerts and evaluation ----------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """An alert a rule ``score > threshold for: <for>`` would have fired."""

    fired: float  # when it would have turned firing
    start: float  # first point above the threshold
    end: float  # last point above the threshold
    peak: float

    def to_json(self) -> dict[str, Any]:
        return {"fired": _iso(self.fired), "start": _iso(self.start), "end": _iso(self.end), "peak_score": round(self.peak, 3)}


def alerts_from_scores(t: np.ndarray, score: np.ndarray, threshold: float = ALERT_THRESHOLD, for_: float = ALERT_FOR) -> list[Alert]:
    """Runs of consecutive points above ``threshold`` lasting at least ``for_`` (a missing score breaks a run)."""
    above = np.nan_to_num(score, nan=-np.inf) > threshold
    if not above.any():
        return []
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    alerts = []
    for a, b in zip(starts.tolist(), stops.tolist()):
        if t[b] - t[a] >= for_:
            fire = a + int(np.searchsorted(t[a : b + 1], t[a] + for_ - 1e-9))
            alerts.append(Alert(float(t[fire]), float(t[a]), float(t[b]), float(np.max(score[a : b + 1]))))
    return alerts


@dataclass
class Evaluation:
    """Event-level agreement of alerts with labelled anomaly windows."""

    windows: int = 0
    detected: int = 0
    alerts: int = 0
    true_alerts: int = 0
    delays: list[float] = field(default_factory=list)

    def add(self, other: "Evaluation") -> None:
        self.windows += other.windows
        self.detected += other.detected
        self.alerts += other.alerts
        self.true_alerts += other.true_alerts
        self.delays += other.delays

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else float("nan")

    @property
    def recall(self) -> float:
        return self.detected / self.windows if self.windows else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return 0.0 if (self.windows or self.alerts) else float("nan")
        return 2 * p * r / (p + r)

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "windows": self.windows,
            "detected_windows": self.detected,
            "alerts": self.alerts,
            "false_alerts": self.alerts - self.true_alerts,
            "precision": num(self.precision),
            "recall": num(self.recall),
            "f1": num(self.f1),
            "median_delay_seconds": float(np.median(self.delays)) if self.delays else None,
        }


def evaluate(alerts: Sequence[Alert], windows: Sequence[tuple[float, float]]) -> Evaluation:
    """A window is detected when an alert fires inside it; an alert firing in no window is false."""
    ev = Evaluation(windows=len(windows), alerts=len(alerts))
    fired = np.array([a.fired for a in alerts])
    inside_any = np.zeros(len(alerts), dtype=bool)
    for lo, hi in windows:
        inside = (fired >= lo) & (fired <= hi) if fired.size else np.zeros(0, dtype=bool)
        inside_any |= inside
        if inside.any():
            ev.detected += 1
            ev.delays.append(float(fired[inside].min() - lo))
    ev.true_alerts = int(inside_any.sum())
    return ev


def read_labels(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``{"relative/path.csv": [["start", "end"], ...]}`` (the NAB format) as unix-second windows."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BadInput(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f'{path}: expected {{"file.csv": [["start", "end"], ...]}}')
    out = {}
    for key, wins in data.items():
        if not isinstance(wins, list) or not all(isinstance(w, list) and len(w) == 2 for w in wins):
            raise BadInput(f"{path}: {key!r}: expected a list of [start, end] pairs")
        try:
            out[key] = [(parse_time(str(a), 0.0), parse_time(str(b), 0.0)) for a, b in wins]
        except BadInput as exc:
            raise BadInput(f"{path}: {key!r}: {exc}") from None
    return out


# -- scoring ----------------------------------------------------------------------------------
def refit_points(spec: QuerySpec) -> int:
    """Points between refits in the live sidecar: every cycle, or every refit_interval."""
    return max(1, round(max(spec.interval, spec.refit_interval, spec.step) / spec.step))


def to_rates(labels: Sequence[Mapping[str, str]], X: np.ndarray, step: float, mode: str) -> np.ndarray:
    """The live sidecar's counter handling (``counters:``), for a whole history at once."""
    flags = np.array([mode == "rate" or (mode == "auto" and lbl.get("__name__", "").endswith(COUNTER_SUFFIXES)) for lbl in labels], dtype=bool)
    if flags.any():
        X = X.copy()
        X[flags] = counter_rates(X[flags], step)
    return X


@dataclass
class SeriesResult:
    labels: dict[str, str]
    t: np.ndarray
    value: np.ndarray
    scores: Scores  # rows of length 1
    alerts: list[Alert]

    @property
    def points(self) -> int:
        return int(np.sum(~np.isnan(self.scores.score)))

    @property
    def anomalous(self) -> int:
        return int(np.sum(np.nan_to_num(self.scores.score, nan=0.0) > ALERT_THRESHOLD))


def backtest_query(
    spec: QuerySpec,
    client: PrometheusClient,
    start: float,
    end: float,
    *,
    threshold: float = ALERT_THRESHOLD,
    for_: float = ALERT_FOR,
) -> list[SeriesResult]:
    """Replay one query over [start, end] as the live sidecar would have scored it."""
    step, history = spec.step, spec.history_points
    first = math.ceil(start / step) * step
    result = client.query_range(spec.expr, first - history * step, end, step)
    keys = [series_key(lbl) for lbl in result.labels]
    if len(set(keys)) != len(keys):
        raise BadInput(f"query {spec.name!r}: series differ only in their metric name; aggregate or label them apart")
    X = to_rates(result.labels, result.values, step, spec.counters)
    scores = replay(spec.detector(), X, result.timestamps, history=history, refit_every=refit_points(spec), start=history)
    out = []
    keep = slice(history, None)
    for i, key in enumerate(keys):
        s = scores.take((slice(i, i + 1), keep))
        t = result.timestamps[keep]
        out.append(SeriesResult(dict(key), t, X[i, keep], s, alerts_from_scores(t, s.score[0], threshold, for_)))
    return out


def grid_positions(t: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Slots of rows on a regular grid at the median spacing (gaps become empty slots).

    Repeated or backward timestamps move to the next free slot, so rows keep their file
    order. None when the gaps would make the grid much longer than the data (then rows are
    scored as they are, at their own times).
    """
    if t.size < 3:
        return None
    step = float(np.median(np.diff(t)))
    if not step > 0:
        return None
    idx = np.rint((t - t[0]) / step).astype(np.int64)
    idx = np.maximum.accumulate(idx - np.arange(idx.size)) + np.arange(idx.size)  # strictly increasing
    if idx[-1] + 1 > 4 * t.size:
        return None
    return idx, step


def score_table(table: Table, detector: Detector, *, history: int, refit_every: int, train: Table | None = None) -> Scores:
    """Causal scores of a univariate table (one value column), one per row.

    Rows are placed on a regular grid first, so that a file with missing rows is replayed
    like the live sidecar would see it (gaps) and takes replay's vectorised path.
    """
    values, t = table.values[:, 0], table.timestamps
    placed = grid_positions(t)
    if placed is not None:
        idx, step = placed
        x = np.full(int(idx[-1]) + 1, np.nan)
        x[idx] = values
        tg = t[0] + step * np.arange(x.size)
    else:
        idx, x = np.arange(t.size), values
        tg = t if np.all(np.diff(t) > 0) else t[0] + np.arange(t.size, dtype=np.float64)
    if train is None:
        s = replay(detector, x[None, :], tg, history=history, refit_every=refit_every)
    else:
        if train.names != table.names:
            raise BadInput(f"{train.path}: columns {train.names} differ from {table.path}: {table.names}")
        train_t = train.timestamps[-history:]
        fitted = detector.fit(train.values[-history:, 0][None, :], train_t)
        s = fitted.score(x[None, :], tg)
    return s.take((slice(None), idx))


# -- output --------------------------------------------------------------------------------
def _cell(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def write_scores_csv(path: Path, table: Table, scores: Scores) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [table.values[:, 0], scores.score[0], scores.expected[0], scores.lower[0], scores.upper[0]]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "score", "expected", "lower", "upper"])
        rows = zip(table.raw_timestamps, *(map(_cell, c.tolist()) for c in cols))
        w.writerows(rows)


def write_multivariate_csv(path: Path, table: Table, score: np.ndarray, contributions: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "score", *(f"{n}_contribution" for n in table.names)])
        for i, ts in enumerate(table.raw_timestamps):
            w.writerow([ts, _cell(score[i]), *(_cell(c) for c in contributions[i].tolist())])


def openmetrics_lines(results: Iterable[SeriesResult], query: str, detector: str, extra: Mapping[str, str]) -> dict[str, list[str]]:
    """Sample lines per family, with the live sidecar's labels, for ``promtool tsdb create-blocks-from``."""
    out: dict[str, list[str]] = {name: [] for name, _ in FAMILIES}
    for r in results:
        lbl = label_text({**published_labels(r.labels, query, detector), **extra})
        cols = {
            "anomaly_score": r.scores.score[0],
            "anomaly_value": r.value,
            "anomaly_expected": r.scores.expected[0],
            "anomaly_lower": r.scores.lower[0],
            "anomaly_upper": r.scores.upper[0],
        }
        ok = ~np.isnan(r.scores.score[0])
        for name, vals in cols.items():
            out[name].extend(f"{name}{lbl} {_om_value(v)} {ts:.3f}" for v, ts in zip(vals[ok].tolist(), r.t[ok].tolist()))
    return out


def _om_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def write_openmetrics(path: Path, families: Mapping[str, list[str]]) -> int:
    """Write OpenMetrics text (families contiguous, ``# EOF``); returns the sample count."""
    docs = dict(FAMILIES)
    n = 0
    with open(path, "w") as f:
        for name, lines in families.items():
            if not lines:
                continue
            f.write(f"# HELP {name} {docs[name]}\n# TYPE {name} gauge\n")
            f.write("\n".join(lines) + "\n")
            n += len(lines)
        f.write("# EOF\n")
    return n
