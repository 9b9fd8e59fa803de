"""One query's scoring cycle: fetch new steps, refit when due, score, publish a QueryView.

Flow: reader (prometheus.py) -> buffer.py -> detector -> snapshot.QueryView. A cycle never
raises: every failure becomes a counted, logged error on the view, and the series already
published stay until their TTL runs out, then disappear instead of freezing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sidecar.buffer import LabelKey, SeriesBuffer
from sidecar.config import QuerySpec
from sidecar.detectors import Detector
from sidecar.logs import kv
from sidecar.prometheus import PrometheusClient, QueryError, RangeResult
from sidecar.snapshot import FAMILIES, QueryView, label_text, published_labels, render_chunks
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

#: Steps re-read at the start of every fetch: samples that arrived late replace earlier reads.
OVERLAP_STEPS = 2
#: Series x history points per fit call: detectors that treat series independently are fitted
#: in chunks of series, which bounds the fit's peak memory whatever the query returns.
FIT_CHUNK_CELLS = 1_000_000
MIN_FIT_CHUNK = 256
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def counter_rates(X: np.ndarray, step: float) -> np.ndarray:
    """Per-second increase between consecutive points, with counter resets handled.

    A decrease means the counter restarted from zero (a pod restart): the increase since
    the reset is the new value itself, as in Prometheus' rate(). Without this a raw counter
    would page on every restart.
    """
    out = np.full_like(X, np.nan)
    if X.shape[1] > 1:
        prev, cur = X[:, :-1], X[:, 1:]
        inc = cur - prev
        out[:, 1:] = np.where(inc < 0, cur, inc) / step
    return out


def series_key(labels: dict[str, str]) -> LabelKey:
    """Identity of a series for this sidecar: its labels without the metric name."""
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


@dataclass
class Fit:
    """A detector fitted on ``rows`` of the buffer with history up to ``fit_end``."""

    rows: np.ndarray
    detector: Detector
    fit_end: float
    fitted_at: float


@dataclass
class CycleStats:
    returned: int = 0
    scored: int = 0
    not_ready: int = 0


def _last_valid(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether any column is True, and the index of the last True column."""
    has = mask.any(axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return has, last


class QueryRunner:
    """Holds one query's state between cycles; ``run()`` does one cycle and returns its view."""

    def __init__(
        self,
        spec: QuerySpec,
        client: PrometheusClient,
        *,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.client = client
        self.telemetry = telemetry
        self.clock = clock
        # The window holds the history a fit sees plus the points scored with that fit (one
        # cycle, or one refit interval and a cycle), so that every fit sees exactly `history`.
        between_fits = math.ceil((max(spec.interval, spec.refit_interval) + spec.interval) / spec.step)
        self.buffer = SeriesBuffer(spec.step, spec.history_points + max(1, between_fits))
        self.labels_text: list[str] = []
        self.is_counter = np.zeros(0, dtype=bool)
        self.outputs = np.full((len(FAMILIES), 0), np.nan)  # last published outputs per row
        self.published_at = np.zeros(0)  # wall time each row was last scored (0: never)
        self.full_fits: list[Fit] = []  # the last full refit, in chunks of series
        self.catchup: list[Fit] = []  # series that appeared since the last full refit
        self.rows_at_full_fit = 0
        self.view = QueryView(spec.name, spec.expr, spec.detector_name, spec.interval, spec.step)
        self._last_problem: str | None = None
        if telemetry is not None:
            telemetry.init_query(spec.name)

    # -- the cycle -----------------------------------------------------------------------
    def run(self) -> QueryView:
        """One cycle; never raises. Returns (and keeps) the new view."""
        now = self.clock()
        started = time.perf_counter()
        stats: CycleStats | None = None
        error: QueryError | None = None
        try:
            stats = self._cycle(now)
        except QueryError as exc:
            error = exc
        except Exception as exc:  # a detector or parsing bug must not stop the other queries
            log.exception("cycle failed unexpectedly", extra=kv(query=self.spec.name))
            error = QueryError("internal", f"{type(exc).__name__}: {exc}")
        duration = time.perf_counter() - started
        visible = (self.published_at > 0) & (now - self.published_at <= self.spec.series_ttl)
        chunks = render_chunks([self.labels_text[i] for i in np.flatnonzero(visible)], self.outputs[:, visible])
        common = dict(
            last_run=self.clock(),
            duration=duration,
            series_published=int(visible.sum()),
            series_anomalous=int(np.sum(self.outputs[0, visible] > 1)),
            chunks=chunks,
        )
        if error is not None:
            self._report_problem(str(error), logging.WARNING, "query failed", reason=error.reason)
            if self.telemetry is not None:
                self.telemetry.query_errors.labels(self.spec.name, error.reason).inc()
            self.view = self.view.finished(success=False, error=str(error), error_reason=error.reason, **common)
        elif stats is None:  # nothing was due: keep the last cycle's status, refresh expiry
            self.view = self.view.finished(**common)
        else:
            if stats.returned == 0:
                self._report_problem("no series", logging.INFO, "query returned no series")
            elif self._last_problem is not None:
                log.info("query recovered", extra=kv(query=self.spec.name, series=stats.returned))
                self._last_problem = None
            self.view = self.view.finished(
                success=True,
                error=None,
                error_reason=None,
                last_success=common["last_run"],
                series_returned=stats.returned,
                series_scored=stats.scored,
                series_not_ready=stats.not_ready,
                **common,
            )
        if self.telemetry is not None:
            self.telemetry.cycle_duration.labels(self.spec.name).observe(duration)
        return self.view

    def published(self) -> list[tuple[dict[str, str], list[float]]]:
        """Series on /metrics now: (source labels without __name__, [score, value, expected, lower, upper])."""
        now = self.clock()
        visible = np.flatnonzero((self.published_at > 0) & (now - self.published_at <= self.spec.series_ttl))
        return [(dict(self.buffer.keys[i]), self.outputs[:, i].tolist()) for i in visible]

    def _report_problem(self, key: str, level: int, what: str, **fields: str) -> None:
        """Log a problem once when it starts or changes, not every cycle (no log flood)."""
        repeated = key == self._last_problem
        self._last_problem = key
        log.log(logging.DEBUG if repeated else level, what, extra=kv(query=self.spec.name, **fields, error=key))

    def _window(self, now: float) -> tuple[float, float] | None:
        """(start, end) on the step grid for this cycle's fetch, or None if no new step is due."""
        step, cap = self.spec.step, self.buffer.capacity
        end = math.floor(now / step) * step
        full_start = end - (cap - 1) * step
        prev = self.buffer.end
        if prev is None or end - prev >= cap * step:
            return full_start, end
        if end <= prev:
            return None
        return max(full_start, prev - OVERLAP_STEPS * step), end

    def _cycle(self, now: float) -> CycleStats | None:
        window = self._window(now)
        if window is None:  # interval shorter than step: no new point yet, the last result stands
            return None
        first = self.buffer.end is None or window[1] - self.buffer.end >= self.buffer.capacity * self.spec.step
        result = self.client.query_range(self.spec.expr, window[0], window[1], self.spec.step)
        if self.telemetry is not None:
            self.telemetry.samples_fetched.labels(self.spec.name).inc(int(np.count_nonzero(~np.isnan(result.values))))
        keys = self._check_result(result)
        rows, added = self.buffer.merge(result, keys)
        self._add_rows(result)
        cap = self.buffer.capacity
        n_new = max(1, min(round(self.spec.interval / self.spec.step), cap - 1)) if first else max(1, min(added, cap - 1))
        rows = self._refit(now, cap - n_new, rows)
        return self._score(now, n_new, rows)

    def _check_result(self, result: RangeResult) -> list[LabelKey]:
        if result.n_series > self.spec.max_series:
            raise QueryError(
                "too_many_series",
                f"query returned {result.n_series} series, above max_series={self.spec.max_series}: "
                "aggregate it (sum by ...) or raise max_series",
            )
        keys = [series_key(lbl) for lbl in result.labels]
        if len(set(keys)) != len(keys):
            seen: set[LabelKey] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise QueryError(
                "duplicate_series",
                f"series differ only in their metric name, e.g. {dict(dup)}: aggregate or label them apart",
            )
        return keys

    def _add_rows(self, result: RangeResult) -> None:
        """Per-row state for rows the buffer just created (label text, counter flag, outputs)."""
        n_old, n = len(self.labels_text), self.buffer.n_rows
        if n == n_old:
            return
        by_key = {series_key(lbl): lbl for lbl in result.labels}
        new = [by_key[k] for k in self.buffer.keys[n_old:]]
        self.labels_text += [label_text(published_labels(lbl, self.spec.name, self.spec.detector_name)) for lbl in new]
        mode = self.spec.counters
        flags = [mode == "rate" or (mode == "auto" and lbl.get("__name__", "").endswith(COUNTER_SUFFIXES)) for lbl in new]
        self.is_counter = np.concatenate([self.is_counter, np.asarray(flags, dtype=bool)])
        self.outputs = np.concatenate([self.outputs, np.full((len(FAMILIES), n - n_old), np.nan)], axis=1)
        self.published_at = np.concatenate([self.published_at, np.zeros(n - n_old)])

    def _values(self) -> np.ndarray:
        X = self.buffer.values
        if self.is_counter.any():
            X = X.copy()
            X[self.is_counter] = counter_rates(X[self.is_counter], self.spec.step)
        return X

    def _fit(self, rows: np.ndarray, cut: int, now: float) -> list[Fit]:
        """Fit ``rows`` on the ``history`` points before column ``cut``, in chunks of series."""
        cols = slice(max(0, cut - self.spec.history_points), cut)
        values, t = self._values(), self.buffer.timestamps[cols]
        first = self.spec.detector()
        size = rows.size if first.pools_series else max(MIN_FIT_CHUNK, FIT_CHUNK_CELLS // max(1, self.spec.history_points))
        fits = []
        for c0 in range(0, max(rows.size, 1), size):
            chunk = rows[c0 : c0 + size]
            detector = first if c0 == 0 else self.spec.detector()
            fits.append(Fit(chunk, detector.fit(values[chunk, cols], t), float(t[-1]), now))
        return fits

    def _refit(self, now: float, cut: int, rows: np.ndarray) -> np.ndarray:
        """Refit everything when due, else fit only series new since the last full fit.

        Returns ``rows`` (buffer rows of the current result) renumbered if rows were dropped.
        """
        due = not self.full_fits or now - self.full_fits[0].fitted_at >= self.spec.refit_interval
        if due:
            rows = self._compact(now, rows)
            started = time.perf_counter()
            self.full_fits = self._fit(np.arange(self.buffer.n_rows), cut, now)
            if self.telemetry is not None:
                self.telemetry.fit_duration.labels(self.spec.name, self.spec.detector_name).set(time.perf_counter() - started)
            self.catchup = []
            self.rows_at_full_fit = self.buffer.n_rows
        elif self.buffer.n_rows > self.rows_at_full_fit:
            new_rows = np.arange(self.rows_at_full_fit, self.buffer.n_rows)
            covered = sum(f.rows.size for f in self.catchup)
            if covered != new_rows.size or not all(f.detector.ready_.all() for f in self.catchup):
                self.catchup = self._fit(new_rows, cut, now)
        return rows

    def _compact(self, now: float, rows: np.ndarray) -> np.ndarray:
        """Forget series with no data left in the window whose published scores have expired."""
        keep = ~np.all(np.isnan(self.buffer.values), axis=1)
        keep |= (self.published_at > 0) & (now - self.published_at <= self.spec.series_ttl)
        keep[rows] = True
        if keep.all():
            return rows
        old = self.buffer.compact(keep)
        self.labels_text = [self.labels_text[i] for i in old]
        self.is_counter = self.is_counter[old]
        self.outputs = self.outputs[:, old]
        self.published_at = self.published_at[old]
        renumber = np.full(keep.size, -1, dtype=np.intp)
        renumber[old] = np.arange(old.size)
        return renumber[rows]

    def _score(self, now: float, n_new: int, rows: np.ndarray) -> CycleStats:
        X, t = self._values(), self.buffer.timestamps
        new_cols = slice(X.shape[1] - n_new, X.shape[1])
        present = np.zeros(self.buffer.n_rows, dtype=bool)
        present[rows] = ~np.all(np.isnan(X[rows, new_cols]), axis=1)
        scored = np.zeros(self.buffer.n_rows, dtype=bool)
        for fit in [*self.full_fits, *self.catchup]:
            if fit.rows.size == 0:
                continue
            cols = t > fit.fit_end
            values = X[fit.rows][:, cols]
            s = fit.detector.score(values, t[cols])
            # This cycle's new points are the last n_new of the scored columns.
            tail = slice(s.score.shape[1] - n_new, s.score.shape[1])
            sc = s.score[:, tail]
            has, last = _last_valid(~np.isnan(sc))
            if not has.any():
                continue
            r = np.arange(sc.shape[0])[has]
            pick = last[has]
            target = fit.rows[has]
            for i, arr in enumerate((sc, values[:, tail], s.expected[:, tail], s.lower[:, tail], s.upper[:, tail])):
                self.outputs[i, target] = arr[r, pick]
            self.published_at[target] = now
            scored[target] = True
        return CycleStats(returned=len(rows), scored=int(scored.sum()), not_ready=int(np.sum(present & ~scored)))
