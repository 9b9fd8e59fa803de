"""Reads range queries from Prometheus' HTTP API into numpy arrays on the step grid.

One ``requests.Session`` per client; connection errors and 5xx are retried with backoff,
4xx are not (``bad_data`` is a config error and is reported as such). A range that would
exceed Prometheus' per-series point limit is split into several requests.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import requests

from sidecar import __version__
from sidecar.config import PROMETHEUS_MAX_POINTS, PrometheusSettings
from sidecar.logs import kv

log = logging.getLogger(__name__)

#: Points of the first request of a long range: enough for a cycle's new points in one request,
#: small enough to learn the number of series cheaply before sizing the rest.
FIRST_REQUEST_POINTS = 64

#: Reasons used as the ``reason`` label of anomaly_sidecar_query_errors_total.
REASONS = ("connection", "timeout", "http", "auth", "bad_data", "execution", "parse", "too_many_series", "duplicate_series", "detector", "internal")


class QueryError(Exception):
    """A query failed; ``reason`` is a short stable label value, ``retryable`` whether to try again."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class RangeResult:
    """A matrix on the grid ``timestamps``: one row of ``values`` per entry of ``labels``."""

    timestamps: np.ndarray
    labels: list[dict[str, str]]
    values: np.ndarray

    @property
    def n_series(self) -> int:
        return len(self.labels)


def grid(start: float, end: float, step: float) -> np.ndarray:
    """Evaluation timestamps of a range query: start, start + step, ... <= end."""
    n = int(math.floor((end - start) / step + 1e-9)) + 1
    return start + step * np.arange(max(n, 0), dtype=np.float64)


def parse_matrix(data: Any, timestamps: np.ndarray, step: float) -> tuple[list[dict[str, str]], np.ndarray]:
    """Parse the ``data`` of a query_range response into labels and a (series × time) array.

    Values are strings in the API ("1.5", "NaN", "+Inf"); points missing from a series
    (no sample within the lookback) are NaN. The whole response is converted with one
    numpy call rather than per-series loops over floats.
    """
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise QueryError("parse", f"expected a matrix result, got {str(data)[:200]!r}")
    result = data["result"]
    n_series, n_time = len(result), timestamps.size
    values = np.full((n_series, n_time), np.nan)
    if n_series == 0:
        return [], values
    try:
        labels = [s["metric"] for s in result]
        counts = np.fromiter((len(s.get("values", ())) for s in result), dtype=np.intp, count=n_series)
        points = [p for s in result for p in s.get("values", ())]
        ts = np.array([p[0] for p in points], dtype=np.float64)
        vs = np.array([p[1] for p in points], dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise QueryError("parse", f"malformed matrix in response: {exc}") from None
    rows = np.repeat(np.arange(n_series, dtype=np.intp), counts)
    cols = np.rint((ts - timestamps[0]) / step).astype(np.intp) if ts.size else np.empty(0, np.intp)
    inside = (cols >= 0) & (cols < n_time)
    values[rows[inside], cols[inside]] = vs[inside]
    return labels, values


class PrometheusClient:
    """Range and check queries against one Prometheus (or Mimir, Cortex, Thanos) endpoint."""

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"anomaly-sidecar/{__version__}"
        self.session.headers.update(settings.headers)
        tls = settings.tls
        if tls.insecure_skip_verify:
            self.session.verify = False
        elif tls.ca_file is not None:
            self.session.verify = str(tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            self.session.cert = (str(tls.cert_file), str(tls.key_file))
        if settings.basic_auth is not None:
            self.session.auth = (settings.basic_auth.username, self._basic_password())
        self._sleep = sleep

    def close(self) -> None:
        self.session.close()

    def _basic_password(self) -> str:
        ba = self.settings.basic_auth
        assert ba is not None
        if ba.password_file is not None:
            return ba.password_file.read_text().strip()
        return ba.password or ""

    def _auth_headers(self) -> dict[str, str]:
        # Read on every request: mounted service-account tokens rotate under a running pod.
        path = self.settings.bearer_token_file
        if path is None:
            return {}
        try:
            return {"Authorization": f"Bearer {path.read_text().strip()}"}
        except OSError as exc:
            raise QueryError("auth", f"cannot read bearer_token_file {str(path)!r}: {exc.strerror}") from None

    # -- HTTP ----------------------------------------------------------------------------
    def _request(self, endpoint: str, params: dict[str, Any]) -> Any:
        """POST a form to ``/api/v1/<endpoint>``; returns ``data``; retries what can succeed later."""
        url = f"{self.settings.url}/api/v1/{endpoint}"
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return self._request_once(url, params)
            except QueryError as exc:
                if not exc.retryable or attempt == attempts - 1:
                    raise
                delay = min(5.0, 0.5 * 2**attempt) * (0.5 + random.random())
                log.debug("retrying query", extra=kv(attempt=attempt + 1, delay=round(delay, 2), error=exc))
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _request_once(self, url: str, params: dict[str, Any]) -> Any:
        try:
            resp = self.session.post(url, data=params, headers=self._auth_headers(), timeout=self.settings.timeout)
        except requests.Timeout:
            raise QueryError("timeout", f"no answer from {self.settings.url} within {self.settings.timeout:g}s", retryable=True) from None
        except requests.ConnectionError as exc:
            raise QueryError("connection", f"cannot connect to {self.settings.url}: {_root_cause(exc)}", retryable=True) from None
        except requests.RequestException as exc:
            raise QueryError("connection", f"request to {self.settings.url} failed: {exc}", retryable=True) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 200 and isinstance(body, dict) and body.get("status") == "success":
            for warning in body.get("warnings", ()) or ():
                log.warning("prometheus warning", extra=kv(warning=warning))
            return body.get("data")
        error = body.get("error") if isinstance(body, dict) else None
        error_type = body.get("errorType") if isinstance(body, dict) else None
        text = error or (resp.text[:200].strip() or resp.reason)
        code = resp.status_code
        if code in (401, 403):
            raise QueryError("auth", f"HTTP {code} from {self.settings.url}: {text}")
        if error_type == "bad_data" or code == 400:
            raise QueryError("bad_data", f"Prometheus rejected the expression: {text}")
        if error_type in ("execution", "timeout", "canceled") or code == 422:
            # Query too expensive, or Prometheus' own timeout: retrying now would do the same.
            raise QueryError("execution", f"Prometheus could not run the query: {text}")
        retryable = code >= 500 or code == 429
        raise QueryError("http", f"HTTP {code} from {url}: {text}", retryable=retryable)

    # -- queries -------------------------------------------------------------------------
    def query_range(self, expr: str, start: float, end: float, step: float) -> RangeResult:
        """Evaluate ``expr`` at start, start+step, ... <= end, in requests of bounded size.

        Each request stays under Prometheus' per-series point limit and, once the number of
        series is known from a short first request, under ``max_samples_per_request`` samples
        in total: decoding a JSON answer costs ~150 bytes of Python objects per sample, so a
        whole history of 10,000 series in one answer would need gigabytes.
        """
        ts = grid(start, end, step)
        limit = min(self.settings.max_points_per_query, PROMETHEUS_MAX_POINTS)
        budget = self.settings.max_samples_per_request
        index: dict[tuple, int] = {}
        labels: list[dict[str, str]] = []
        chunks: list[tuple[int, list[int], np.ndarray]] = []
        c0, size, widest = 0, min(limit, FIRST_REQUEST_POINTS), 0
        while c0 < ts.size:
            part = ts[c0 : c0 + size]
            data = self._request(
                "query_range",
                {"query": expr, "start": _fmt(part[0]), "end": _fmt(part[-1]), "step": _fmt(step), "timeout": f"{self.settings.timeout:g}s"},
            )
            part_labels, part_values = parse_matrix(data, part, step)
            rows = []
            for lbl in part_labels:
                key = tuple(sorted(lbl.items()))
                if key not in index:
                    index[key] = len(labels)
                    labels.append(lbl)
                rows.append(index[key])
            chunks.append((c0, rows, part_values))
            c0 += part.size
            widest = max(widest, len(part_labels))
            size = int(min(limit, max(1, budget // max(widest, 1))))
        if len(chunks) == 1 and chunks[0][1] == list(range(len(labels))):
            return RangeResult(ts, labels, chunks[0][2])
        values = np.full((len(labels), ts.size), np.nan)
        for c0, rows, part_values in chunks:
            values[np.asarray(rows, dtype=np.intp), c0 : c0 + part_values.shape[1]] = part_values
        return RangeResult(ts, labels, values)

    def check_expression(self, expr: str) -> None:
        """Ask Prometheus to parse and type-check ``expr`` as a range query, at no cost.

        Evaluated at t=0 (1970), where no data exists: a syntax or type error comes back as
        bad_data, a valid expression returns an empty matrix in microseconds.
        """
        self._request("query_range", {"query": expr, "start": "0", "end": "0", "step": "1"})


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests error, without urllib3's long wrapper text."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if marker in text:
            return marker.lower()
    return text.split(": ", 1)[-1][:200]
