"""Publishes the snapshot over HTTP: /metrics, /-/healthy, /-/ready and a landing page.

A scrape never waits on scoring: it reads the last finished snapshot. The ``anomaly_*``
families arrive pre-rendered from each query's cycle and are joined once per snapshot
version; self-monitoring comes from prometheus_client collectors rendered per scrape.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from sidecar import __version__
from sidecar.durations import format_duration
from sidecar.logs import kv
from sidecar.snapshot import FAMILIES, Snapshot, SnapshotStore

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SelfCollector:
    """Per-query facts of the last finished cycle, as ``anomaly_sidecar_*`` gauges."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        views = self.store.current().views.values()
        info = GaugeMetricFamily("anomaly_sidecar_build_info", "Version of the running sidecar; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        families = [
            ("anomaly_sidecar_series_scored", "Series scored in the query's last cycle.", lambda v: v.series_scored),
            ("anomaly_sidecar_series_not_ready", "Series in the query's last result with too little history to be scored.", lambda v: v.series_not_ready),
            ("anomaly_sidecar_series_published", "Series with scores on /metrics (scored recently, within series_ttl).", lambda v: v.series_published),
            ("anomaly_sidecar_query_interval_seconds", "Configured interval between cycles of the query.", lambda v: v.interval),
            ("anomaly_sidecar_query_step_seconds", "Configured step (resolution) of the query: a new point to score comes at most this often.", lambda v: v.step),
        ]
        for name, doc, get in families:
            g = GaugeMetricFamily(name, doc, labels=["query"])
            for v in views:
                g.add_metric([v.name], get(v))
            yield g
        ok = GaugeMetricFamily("anomaly_sidecar_query_success", "1 if the query's last cycle succeeded, 0 if it failed.", labels=["query"])
        last = GaugeMetricFamily(
            "anomaly_sidecar_last_success_timestamp_seconds", "Unix time the query's last successful cycle finished.", labels=["query"]
        )
        for v in views:
            if v.success is not None:
                ok.add_metric([v.name], 1.0 if v.success else 0.0)
            if v.last_success is not None:
                last.add_metric([v.name], v.last_success)
        yield ok
        yield last


def render_scores(snapshot: Snapshot) -> bytes:
    """All ``anomaly_*`` families of every query, each family contiguous as the format requires."""
    parts = []
    for i, (name, doc) in enumerate(FAMILIES):
        parts.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n".encode())
        parts.extend(v.chunks[i] for v in snapshot.views.values())
    return b"".join(parts)


class Exporter:
    """The HTTP side: serves ``store`` and the self-monitoring ``registry`` on ``listen``."""

    def __init__(self, store: SnapshotStore, registry: CollectorRegistry, listen: str) -> None:
        self.store = store
        self.registry = registry
        self.listen = listen
        self._cache: tuple[int, bytes] = (-1, b"")
        self._cache_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.started = time.time()

    # -- content -------------------------------------------------------------------------
    def scores_text(self) -> bytes:
        snap = self.store.current()
        with self._cache_lock:
            if self._cache[0] != snap.version:
                self._cache = (snap.version, render_scores(snap))
            return self._cache[1]

    def metrics_body(self) -> bytes:
        return self.scores_text() + generate_latest(self.registry)

    def landing_page(self) -> bytes:
        snap = self.store.current()
        now = time.time()
        rows = []
        for v in snap.views.values():
            if v.last_run is None:
                status, css = "waiting for the first cycle", "wait"
            elif v.success:
                status, css = ("ok" if v.series_returned else "ok, no series returned"), ("ok" if v.series_returned else "warn")
            else:
                status, css = f"error ({v.error_reason}): {v.error}", "err"
            age = f"{format_duration(round(now - v.last_run))} ago" if v.last_run else "never"
            rows.append(
                "<tr>"
                f"<td><b>{html.escape(v.name)}</b><br><code>{html.escape(v.expr)}</code></td>"
                f"<td>{html.escape(v.detector)}</td><td>{format_duration(v.interval)}</td><td>{age}</td>"
                f'<td class="{css}">{html.escape(status)}</td>'
                f"<td>{v.series_returned}</td><td>{v.series_scored}</td><td>{v.series_not_ready}</td>"
                f"<td>{v.series_anomalous}</td></tr>"
            )
        ready = "ready" if snap.ready else "not ready: waiting for the first cycle of every query"
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>anomaly-sidecar</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em .6em;vertical-align:top;text-align:left}} th{{background:#f3f3f3}}
code{{font-size:85%;color:#555}} .ok{{color:#1a7f37}} .warn{{color:#9a6700}} .err{{color:#cf222e}} .wait{{color:#666}}
</style></head><body>
<h1>anomaly-sidecar {html.escape(__version__)}</h1>
<p>Status: {ready}. Up {format_duration(round(now - self.started))}.</p>
<p><a href="/metrics">/metrics</a> · <a href="/-/healthy">/-/healthy</a> · <a href="/-/ready">/-/ready</a></p>
<table><tr><th>query</th><th>detector</th><th>interval</th><th>last run</th><th>status</th>
<th>series returned</th><th>scored</th><th>not ready</th><th>anomalous (score &gt; 1)</th></tr>
{''.join(rows)}
</table></body></html>"""
        return page.encode()

    # -- server --------------------------------------------------------------------------
    def start(self) -> "Exporter":
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        exporter = self

        class Handler(_Handler):
            pass

        Handler.exporter = exporter
        server_cls = _Server6 if ":" in host else ThreadingHTTPServer
        self._server = server_cls((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
        self._thread.start()
        log.info("listening", extra=kv(address=self.address))
        return self

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    exporter: Exporter
    server_version = f"anomaly-sidecar/{__version__}"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.exporter.metrics_body()
            self._send(200, body, CONTENT_TYPE, compress="gzip" in self.headers.get("Accept-Encoding", ""))
        elif path == "/-/healthy":
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
        elif path == "/-/ready":
            if self.exporter.store.current().ready:
                self._send(200, b"Ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"Not ready: waiting for the first cycle of every query\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, self.exporter.landing_page(), "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found. See / for the endpoints.\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, code: int, body: bytes, content_type: str, compress: bool = False) -> None:
        if compress:
            body = gzip.compress(body, compresslevel=1)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server API
        log.debug("http request", extra=kv(client=self.client_address[0], request=format % args))
