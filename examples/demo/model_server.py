"""A small real model behind HTTP, instrumented like real serving stacks, with its own load.

Serves two scikit-learn classifiers ("fraud-v3", "churn-v1") on POST /v1/models/NAME:predict
and exports the metrics model servers usually have:

- model_requests_total{model,status}            counter, by HTTP status
- model_request_duration_seconds{model}         histogram of request latency
- model_inflight_requests{model}                gauge
- model_batch_size{model}                       histogram of rows per request
- model_prediction_score{model}                 histogram of predicted probabilities (drift)
- process_resident_memory_bytes, ...            process metrics (the memory-leak scenario)

A built-in load generator sends requests over loopback with a daily-like rhythm squeezed
into a few minutes, so the metrics move the way production traffic does. Named anomaly
scenarios change the server's behaviour for a while:

    curl -X POST 'http://127.0.0.1:18000/scenario/latency?model=fraud-v3&duration=600'

Scenarios: latency (requests get 300-600 ms slower), errors (a third of requests fail
with 500), traffic_drop (the load falls to a tenth), drift (inputs shift, so prediction
scores shift), memory_leak (the process keeps 4 MB more every second). GET /scenario lists
the active ones; DELETE /scenario ends them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

MODELS = ("fraud-v3", "churn-v1")
SCENARIOS = ("latency", "errors", "traffic_drop", "drift", "memory_leak")
N_FEATURES = 8


class ModelServer:
    """Models, metrics and scenario state; the HTTP handler and the load generator use it."""

    def __init__(self, seed: int = 0) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("model_requests", "Prediction requests by model and HTTP status.", ["model", "status"], registry=self.registry)
        self.latency = Histogram(
            "model_request_duration_seconds",
            "Prediction request latency.",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5),
            registry=self.registry,
        )
        self.inflight = Gauge("model_inflight_requests", "Prediction requests being served.", ["model"], registry=self.registry)
        self.batch = Histogram("model_batch_size", "Rows per prediction request.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.scores = Histogram(
            "model_prediction_score",
            "Predicted probability of the positive class.",
            ["model"],
            buckets=tuple(round(x, 1) for x in np.arange(0.1, 1.0, 0.1)),
            registry=self.registry,
        )
        rng = np.random.default_rng(seed)
        self.models = {}
        for i, name in enumerate(MODELS):
            X, y = make_classification(n_samples=2000, n_features=N_FEATURES, n_informative=5, random_state=seed + i)
            self.models[name] = LogisticRegression(max_iter=500).fit(X, y)
            for status in ("200", "400", "500"):
                self.requests.labels(name, status)
        self.rng = rng
        self.lock = threading.Lock()
        self.active: dict[tuple[str, str], float] = {}  # (scenario, model) -> end time
        self.leak: list[bytes] = []

    # -- scenarios -------------------------------------------------------------------------
    def start_scenario(self, scenario: str, model: str, duration: float) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        if model not in self.models:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        with self.lock:
            self.active[(scenario, model)] = time.time() + duration

    def stop_scenarios(self) -> None:
        with self.lock:
            self.active.clear()
            self.leak.clear()

    def on(self, scenario: str, model: str) -> bool:
        with self.lock:
            end = self.active.get((scenario, model))
            if end is not None and end < time.time():
                del self.active[(scenario, model)]
                if scenario == "memory_leak":
                    self.leak.clear()
                return False
            return end is not None

    def describe(self) -> dict[str, float]:
        now = time.time()
        with self.lock:
            return {f"{s}:{m}": round(end - now) for (s, m), end in self.active.items() if end > now}

    # -- serving ---------------------------------------------------------------------------
    def predict(self, model: str, rows: list[list[float]]) -> tuple[int, dict]:
        """Serve one request; returns (HTTP status, body). Records every metric."""
        if model not in self.models:
            return 404, {"error": f"no model {model!r}"}
        started = time.perf_counter()
        self.inflight.labels(model).inc()
        try:
            X = np.asarray(rows, dtype=float)
            if X.ndim != 2 or X.shape[1] != N_FEATURES:
                status, body = 400, {"error": f"expected rows of {N_FEATURES} features"}
            else:
                # Realistic service time: a base cost, a per-row cost and a long tail.
                time.sleep(0.02 + 0.002 * len(X) + random.expovariate(1 / 0.01))
                if self.on("latency", model):
                    time.sleep(random.uniform(0.3, 0.6))
                if self.on("errors", model) and random.random() < 0.33 or random.random() < 0.003:
                    status, body = 500, {"error": "internal error"}
                else:
                    if self.on("drift", model):
                        X = X + 1.5
                    proba = self.models[model].predict_proba(X)[:, 1]
                    for p in proba:
                        self.scores.labels(model).observe(float(p))
                    self.batch.labels(model).observe(len(X))
                    status, body = 200, {"predictions": proba.round(4).tolist()}
        finally:
            self.inflight.labels(model).dec()
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(time.perf_counter() - started)
        return status, body

    def leak_tick(self) -> None:
        if any(s == "memory_leak" and self.on(s, m) for s, m in list(self.active)):
            self.leak.append(bytes(4 * 1024 * 1024))


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: object) -> None:
            self._send(code, (json.dumps(obj) + "\n").encode())

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/scenario":
                self._json(200, {"active": server.describe(), "available": SCENARIOS, "models": MODELS})
            elif path in ("/", "/healthz"):
                self._json(200, {"models": MODELS, "endpoints": ["POST /v1/models/NAME:predict", "GET /metrics", "POST /scenario/NAME", "DELETE /scenario"]})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if url.path.startswith("/v1/models/") and url.path.endswith(":predict"):
                model = url.path[len("/v1/models/") : -len(":predict")]
                try:
                    rows = json.loads(raw)["instances"]
                except (ValueError, KeyError, TypeError):
                    return self._json(400, {"error": 'expected {"instances": [[...], ...]}'})
                code, body = server.predict(model, rows)
                return self._json(code, body)
            if url.path.startswith("/scenario/"):
                q = parse_qs(url.query)
                try:
                    server.start_scenario(url.path.split("/", 2)[2], q.get("model", [MODELS[0]])[0], float(q.get("duration", ["600"])[0]))
                except ValueError as exc:
                    return self._json(400, {"error": str(exc)})
                return self._json(200, {"active": server.describe()})
            self._json(404, {"error": "not found"})

        def do_DELETE(self) -> None:  # noqa: N802
            if urlsplit(self.path).path == "/scenario":
                server.stop_scenarios()
                return self._json(200, {"active": {}})
            self._json(404, {"error": "not found"})

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def load_generator(server: ModelServer, base_url: str, rps: float, stop: threading.Event, period: float = 1800.0) -> None:
    """Open-loop load: Poisson arrivals every 50 ms tick, a gentle 'daily' rhythm every ``period`` s."""
    session = requests.Session()
    rng = np.random.default_rng(1)
    started = last_leak = time.time()
    tick = 0.05
    while not stop.wait(tick):
        now = time.time()
        phase = 2 * math.pi * (now - started) / period
        for model, share in zip(MODELS, (0.65, 0.35)):
            rate = rps * share * (1 + 0.1 * math.sin(phase))
            if server.on("traffic_drop", model):
                rate *= 0.1
            for _ in range(rng.poisson(rate * tick)):
                rows = rng.normal(0, 1, (int(rng.choice((1, 1, 2, 4, 8))), N_FEATURES)).round(3).tolist()
                threading.Thread(target=_post, args=(session, f"{base_url}/v1/models/{model}:predict", rows), daemon=True).start()
        if now - last_leak >= 1:
            server.leak_tick()
            last_leak = now


def _post(session: requests.Session, url: str, rows: list) -> None:
    try:
        session.post(url, json={"instances": rows}, timeout=5)
    except requests.RequestException:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--load", type=float, default=40.0, help="requests per second of the built-in load generator (0: none)")
    args = p.parse_args()
    server = ModelServer()
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(server))
    httpd.daemon_threads = True
    stop = threading.Event()
    if args.load > 0:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        threading.Thread(target=load_generator, args=(server, f"http://{host}:{args.port}", args.load, stop), daemon=True).start()
    print(f"model server on http://{args.host}:{args.port} (models: {', '.join(MODELS)}; load {args.load:g} req/s)", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        httpd.server_close()


if __name__ == "__main__":
    main()
