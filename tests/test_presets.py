"""The config presets of examples/presets/, checked statically and against a real Prometheus.

The folder is globbed, so a new preset is covered without editing this file:

- every preset is a valid sidecar config (``sidecar.config.load_config``) with an explicit
  detector per query, is listed in examples/presets/README.md, keeps ``namespace`` and ``pod``
  in its aggregations (alerts group by them), and guards every division by a vector with
  ``(... > 0)`` or ``clamp_min``;
- every expression is parsed and type-checked by a real Prometheus, both through
  ``PrometheusClient`` and through the documented ``anomaly-sidecar check-config`` command;
- for every stack with synthetic data below (vLLM, Triton, TorchServe, KServe, generic HTTP),
  half an hour of metrics with the exact names and labels that stack exports is backfilled,
  and every query must return the expected series: the right namespace, pods and models, with
  the model and pod labels kept, finite values, and the ratios at their known values. One
  scoring cycle of the real sidecar (``anomaly-sidecar score``) must then succeed for every query.

One Prometheus for the whole module (the tests marked `integration`); the synthetic data ends a
second before it starts.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from servers import REPO, Prometheus, openmetrics
from sidecar import cli
from sidecar.config import PrometheusSettings, load_config
from sidecar.prometheus import PrometheusClient

PRESETS_DIR = REPO / "examples" / "presets"
PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))
#: The stack's model label, where the stack has one (kept in `by` clauses for grouping alerts).
MODEL_LABELS = {"vllm": "model_name", "triton": "model", "torchserve": "model_name", "kserve": "model_name", "generic-http": "model"}

DATA_SPAN = 30 * 60.0  # seconds of synthetic history
DATA_STEP = 15.0  # a 15 s scrape interval
CHECK_WINDOW = 10 * 60.0  # queries are checked over the last 10 minutes of data


def raw_queries(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["queries"]


def by_clauses(expr: str) -> list[set[str]]:
    """The label sets of every `by (...)` clause of an expression."""
    return [{part.strip() for part in m.split(",") if part.strip()} for m in re.findall(r"\bby\s*\(([^)]*)\)", expr)]


def grouping_labels(expr: str) -> set[str]:
    return set().union(*by_clauses(expr)) - {"le"}


def _paren_group(text: str) -> str:
    """Content of the parenthesised group ``text`` starts with."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return text[1:i]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def unguarded_divisions(expr: str) -> list[str]:
    """Divisions whose right operand is a vector that may be 0: neither `(... > 0)` nor clamp_min."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # a label value may contain '/'
    problems = []
    for m in re.finditer("/", text):
        rest = text[m.end() :].lstrip()
        if re.match(r"[0-9.]", rest) or rest.startswith("clamp_min("):
            continue  # a scalar such as 1e6, or clamped away from 0
        if rest.startswith("(") and re.search(r">\s*0\s*$", _paren_group(rest)):
            continue
        problems.append(" ".join(text[max(0, m.start() - 60) : m.end() + 60].split()))
    return problems


def detector_type(query: dict) -> str | None:
    det = query.get("detector")
    return det.get("type") if isinstance(det, dict) else det


# -- static checks ---------------------------------------------------------------------------
def test_the_presets_folder_holds_the_documented_presets():
    names = {p.stem for p in PRESETS}
    assert {"vllm", "triton", "torchserve", "kserve", "generic-http"} <= names, names
    readme = (PRESETS_DIR / "README.md").read_text()
    for preset in PRESETS:
        assert preset.name in readme, f"{preset.name} is not listed in examples/presets/README.md"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_valid_config_with_an_explicit_detector_per_query(preset):
    config = load_config(preset)
    queries = raw_queries(preset)
    assert len(config.queries) == len(queries) >= 3
    for q, spec in zip(queries, config.queries):
        # Explicit, so that a preset keeps its behaviour when the default detector changes.
        assert q.get("detector") is not None, f"{preset.name}: query {q['name']} relies on the default detector"
        spec.detector()  # builds


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_queries_keep_namespace_pod_and_model_labels(preset):
    model_label = MODEL_LABELS.get(preset.stem)
    keeps_model = []
    for q in raw_queries(preset):
        clauses = by_clauses(q["expr"])
        assert clauses, f"{preset.name}: {q['name']} does not aggregate with `by (...)`: its labels would depend on the exporter"
        for clause in clauses:
            assert "namespace" in clause, f"{preset.name}: {q['name']} drops namespace in by ({', '.join(sorted(clause))})"
            # Seasonal queries sum over pods on purpose: pod names do not live for two days.
            if detector_type(q) != "seasonal":
                assert "pod" in clause, f"{preset.name}: {q['name']} drops pod in by ({', '.join(sorted(clause))})"
        keeps_model.append(model_label in grouping_labels(q["expr"]))
    if model_label is not None:
        assert any(keeps_model), f"{preset.name}: no query keeps the model label {model_label}"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_ratios_are_guarded_against_division_by_zero(preset):
    for q in raw_queries(preset):
        assert not unguarded_divisions(q["expr"]), f"{preset.name}: {q['name']}: unguarded division: {unguarded_divisions(q['expr'])}"


def test_the_division_guard_check_itself():
    assert unguarded_divisions("sum(rate(a[5m])) / sum(rate(b[5m]))")
    assert unguarded_divisions("a / (b)")
    assert not unguarded_divisions("a / (sum by (x) (rate(b[5m])) > 0)")
    assert not unguarded_divisions("a / clamp_min(b, 1e-9) / 1e6")
    assert not unguarded_divisions('a{handler="/v1/completions"} / 1000')


# -- synthetic metrics with the stacks' real names and labels ---------------------------------
@dataclass
class Samples:
    """(name, labels, value, timestamp) rows on a fixed grid, for servers.openmetrics."""

    ts: np.ndarray
    rows: list = field(default_factory=list)
    types: dict = field(default_factory=dict)

    def gauge(self, name: str, labels: dict, value: float) -> None:
        self.rows += [(name, labels, value, t) for t in self.ts]

    def counter(self, name: str, labels: dict, per_second: float) -> None:
        """A counter growing at a constant rate. Names without `_total` (Triton, TorchServe) are
        backfilled as gauges: OpenMetrics requires `_total` on counter samples, PromQL does not care."""
        if name.endswith("_total"):
            self.types[name] = "counter"
        self.rows += [(name, labels, 1000.0 + per_second * (t - self.ts[0]), t) for t in self.ts]

    def histogram(self, name: str, labels: dict, per_second: float, cumulative: dict[str, float], mean: float) -> None:
        """Buckets ``{le: share of observations <= le}`` (the last one "+Inf": 1.0), _count and _sum."""
        for le, share in cumulative.items():
            self.counter(f"{name}_bucket", {**labels, "le": le}, per_second * share)
        self.counter(f"{name}_count", labels, per_second)
        self.counter(f"{name}_sum", labels, per_second * mean)


def target(namespace: str, pod: str, job: str, container: str) -> dict[str, str]:
    """The labels Prometheus' Kubernetes service discovery adds to every scraped series."""
    return {"namespace": namespace, "pod": pod, "job": job, "container": container, "instance": f"{pod}:metrics"}


@dataclass
class Expect:
    """What each query of a preset must return from the synthetic data."""

    namespace: str
    pods: set[str]
    models: set[str]
    #: Per query: other pods / models than the defaults above.
    pods_for: dict[str, set[str]] = field(default_factory=dict)
    models_for: dict[str, set[str]] = field(default_factory=dict)
    #: Per query: {label subset: value at the end of the data}.
    values: dict[str, dict[frozenset, float]] = field(default_factory=dict)
    #: Queries over per-pod or per-GPU metrics, which have no model label; every other query
    #: must keep the stack's model label.
    without_model: set[str] = field(default_factory=set)


def at(**labels: str) -> frozenset:
    return frozenset(labels.items())


LLAMA, MISTRAL = "meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3"


def vllm_data(s: Samples) -> Expect:
    """Three vLLM pods: v0.11+ names only, v0.10 (old and new names side by side), v0.8 (old only)."""
    ttft = {"0.02": 0.1, "0.04": 0.5, "0.1": 0.9, "0.25": 0.99, "0.5": 1.0, "+Inf": 1.0}
    e2e = {"0.5": 0.1, "1.0": 0.3, "2.5": 0.7, "5.0": 0.9, "10.0": 0.99, "20.0": 1.0, "+Inf": 1.0}
    itl = {"0.01": 0.2, "0.025": 0.8, "0.05": 0.97, "0.1": 1.0, "+Inf": 1.0}
    pods = {
        "vllm-llama-0": (LLAMA, {"engine": "0"}, {"new"}),
        "vllm-llama-1": (LLAMA, {"engine": "0"}, {"new", "old"}),
        "vllm-mistral-0": (MISTRAL, {}, {"old"}),
    }
    for pod, (model, extra, names) in pods.items():
        lbl = {**target("llm", pod, "vllm", "vllm"), "model_name": model, **extra}
        s.histogram("vllm:e2e_request_latency_seconds", lbl, 2.0, e2e, mean=2.0)
        s.histogram("vllm:time_to_first_token_seconds", lbl, 2.0, ttft, mean=0.05)
        if "new" in names:
            s.histogram("vllm:inter_token_latency_seconds", lbl, 400.0, itl, mean=0.02)
            s.gauge("vllm:kv_cache_usage_perc", lbl, 0.6)
        if "old" in names:
            s.histogram("vllm:time_per_output_token_seconds", lbl, 400.0, itl, mean=0.02)
            s.gauge("vllm:gpu_cache_usage_perc", lbl, 0.6 if "new" in names else 0.4)
        s.gauge("vllm:num_requests_waiting", lbl, 3)
        s.gauge("vllm:num_requests_running", lbl, 12)
        s.counter("vllm:num_preemptions_total", lbl, 0.05)
        s.counter("vllm:prompt_tokens_total", lbl, 1000.0)
        s.counter("vllm:generation_tokens_total", lbl, 400.0)
        # Finish reasons: v0.8 has no "error" and, here, never hit the length limit (no series).
        reasons = {"stop": 1.8, "length": 0.1, "abort": 0.1, "error": 0.0} if "new" in names else {"stop": 1.9, "abort": 0.1}
        for reason, per_second in reasons.items():
            s.counter("vllm:request_success_total", {**lbl, "finished_reason": reason}, per_second)
    every = {pod: 1.0 for pod in pods}
    return Expect(
        namespace="llm",
        pods=set(pods),
        models={LLAMA, MISTRAL},
        values={
            "vllm_kv_cache_usage": {at(pod="vllm-llama-0"): 0.6, at(pod="vllm-llama-1"): 0.6, at(pod="vllm-mistral-0"): 0.4},
            "vllm_prompt_tokens_per_request": {at(pod=p): 500.0 for p in every},
            "vllm_abort_or_error_ratio": {at(pod=p): 0.05 for p in every},
            "vllm_length_finish_ratio": {at(pod="vllm-llama-0"): 0.05, at(pod="vllm-llama-1"): 0.05, at(pod="vllm-mistral-0"): 0.0},
            "vllm_generation_tokens_rate": {at(pod=p): 400.0 for p in every},
            "vllm_requests_running": {at(pod=p): 12.0 for p in every},
            "vllm_request_rate_daily": {at(model_name=LLAMA): 4.0, at(model_name=MISTRAL): 2.0},
        },
    )


def triton_data(s: Samples) -> Expect:
    """Two Triton pods serving resnet50 and bert; triton-0 also has a loaded, idle model, and
    triton-1 is an older release (failures without the `reason` label, none at all for bert)."""
    models = {  # requests/s, failures/s, inferences per execution, request/queue/compute time (us)
        "resnet50": ("1", 99.0, 1.0, 4.0, 20_000.0, 2_000.0, 15_000.0),
        "bert": ("2", 10.0, 0.0, 1.0, 50_000.0, 1_000.0, 45_000.0),
    }
    for pod, gpu in (("triton-0", "GPU-0a1b2c3d-0000-0000-0000-000000000000"), ("triton-1", "GPU-4e5f6a7b-0000-0000-0000-000000000000")):
        base = target("triton", pod, "triton", "triton")
        served = dict(models, **({"ensemble-idle": ("1", 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)} if pod == "triton-0" else {}))
        for model, (version, success, failure, batch, request_us, queue_us, compute_us) in served.items():
            lbl = {**base, "model": model, "version": version}
            s.counter("nv_inference_request_success", lbl, success)
            if pod == "triton-0":
                s.counter("nv_inference_request_failure", {**lbl, "reason": "BACKEND"}, failure)
                s.counter("nv_inference_request_failure", {**lbl, "reason": "REJECTED"}, 0.0)
            elif failure:
                s.counter("nv_inference_request_failure", lbl, failure)
            s.counter("nv_inference_count", lbl, success * batch)
            s.counter("nv_inference_exec_count", lbl, success)
            s.counter("nv_inference_request_duration_us", lbl, success * request_us)
            s.counter("nv_inference_queue_duration_us", lbl, success * queue_us)
            s.counter("nv_inference_compute_infer_duration_us", lbl, success * compute_us)
            s.gauge("nv_inference_pending_request_count", lbl, 2 if success else 0)
        s.gauge("nv_gpu_utilization", {**base, "gpu_uuid": gpu}, 0.7)
        s.gauge("nv_gpu_memory_used_bytes", {**base, "gpu_uuid": gpu}, 12e9)
        s.gauge("nv_gpu_memory_total_bytes", {**base, "gpu_uuid": gpu}, 16e9)
    busy = {"resnet50", "bert"}
    return Expect(
        namespace="triton",
        pods={"triton-0", "triton-1"},
        models=busy,
        # The idle model has no point in ratios (guarded), but its queue and traffic are real zeros.
        models_for={
            "triton_pending_requests": busy | {"ensemble-idle"},
            "triton_request_rate_daily": busy | {"ensemble-idle"},
        },
        values={
            "triton_request_latency_avg_seconds": {at(model="resnet50"): 0.02, at(model="bert"): 0.05},
            "triton_queue_latency_avg_seconds": {at(model="resnet50"): 0.002, at(model="bert"): 0.001},
            "triton_compute_infer_avg_seconds": {at(model="resnet50"): 0.015, at(model="bert"): 0.045},
            "triton_failure_ratio": {at(model="resnet50"): 0.01, at(model="bert"): 0.0},
            "triton_avg_batch_size": {at(model="resnet50"): 4.0, at(model="bert"): 1.0},
            "triton_gpu_memory_used_ratio": {at(pod="triton-0"): 0.75, at(pod="triton-1"): 0.75},
            "triton_request_rate_daily": {at(model="resnet50"): 198.0, at(model="ensemble-idle"): 0.0},
        },
        without_model={"triton_gpu_utilization", "triton_gpu_memory_used_ratio"},
    )


def torchserve_data(s: Samples) -> Expect:
    """Two TorchServe pods (metrics_mode=prometheus); no 5xx ever, 4xx on torchserve-0 only."""
    for pod, models in (("torchserve-0", ["densenet161"]), ("torchserve-1", ["densenet161", "bert"])):
        base = target("torchserve", pod, "torchserve", "kserve-container")
        for model in models:
            lbl = {**base, "model_name": model, "model_version": "1.0", "hostname": pod}
            s.counter("ts_inference_requests_total", lbl, 5.0)
            s.counter("ts_inference_latency_microseconds", lbl, 5.0 * 30_000)
            s.counter("ts_queue_latency_microseconds", lbl, 5.0 * 500)
        host = {**base, "Level": "Host", "Hostname": pod}
        s.counter("Requests2XX", host, 10.0)
        if pod == "torchserve-0":
            s.counter("Requests4XX", host, 0.5)
        s.gauge("GPUMemoryUtilization", {**host, "DeviceId": "0"}, 45.0)
    return Expect(
        namespace="torchserve",
        pods={"torchserve-0", "torchserve-1"},
        models={"densenet161", "bert"},
        values={
            "torchserve_inference_latency_avg_seconds": {at(pod="torchserve-1", model_name="bert"): 0.03},
            "torchserve_queue_latency_avg_seconds": {at(pod="torchserve-0", model_name="densenet161"): 0.0005},
            "torchserve_5xx_ratio": {at(pod="torchserve-0"): 0.0, at(pod="torchserve-1"): 0.0},
            "torchserve_4xx_ratio": {at(pod="torchserve-0"): 0.5 / 10.5, at(pod="torchserve-1"): 0.0},
            "torchserve_request_rate_daily": {at(model_name="densenet161"): 10.0, at(model_name="bert"): 5.0},
        },
        without_model={"torchserve_5xx_ratio", "torchserve_4xx_ratio", "torchserve_gpu_memory_utilization"},
    )


def kserve_data(s: Samples) -> Expect:
    """Two predictor pods of one InferenceService in Serverless mode; only the first has an explainer."""
    seconds = {"0.005": 0.5, "0.01": 0.9, "0.05": 0.99, "0.1": 1.0, "+Inf": 1.0}
    millis = {"5": 0.3, "10": 0.8, "50": 0.99, "100": 1.0, "+Inf": 1.0}
    pods = ["sklearn-iris-predictor-00001-deployment-6c7b9f-abcde", "sklearn-iris-predictor-00001-deployment-6c7b9f-fghij"]
    for i, pod in enumerate(pods):
        lbl = {**target("kserve-demo", pod, "sklearn-iris-predictor", "kserve-container"), "model_name": "sklearn-iris"}
        for step in ("preprocess", "predict", "postprocess") + (("explain",) if i == 0 else ()):
            s.histogram(f"request_{step}_seconds", lbl, 4.0, seconds, mean=0.006)
        qp = {
            **target("kserve-demo", pod, "sklearn-iris-predictor", "queue-proxy"),
            "namespace_name": "kserve-demo",
            "pod_name": pod,
            "configuration_name": "sklearn-iris-predictor",
            "revision_name": "sklearn-iris-predictor-00001",
            "service_name": "sklearn-iris-predictor",
        }
        codes = {("200", "2xx"): 3.8, ("500", "5xx"): 0.2} if i == 0 else {("200", "2xx"): 4.0}
        for (code, klass), per_second in codes.items():
            qpl = {**qp, "response_code": code, "response_code_class": klass}
            s.counter("revision_app_request_count", qpl, per_second)
            s.histogram("revision_app_request_latencies", qpl, per_second, millis, mean=8.0)
        s.gauge("revision_queue_depth", qp, 1.0)
    return Expect(
        namespace="kserve-demo",
        pods=set(pods),
        models={"sklearn-iris"},
        pods_for={"kserve_explain_latency_p99": {pods[0]}},
        values={
            "kserve_queue_proxy_5xx_ratio": {at(pod=pods[0]): 0.05, at(pod=pods[1]): 0.0},
            "kserve_predict_rate": {at(pod=pods[0]): 4.0},
            "kserve_predict_rate_daily": {at(model_name="sklearn-iris"): 8.0},
        },
        # The queue-proxy knows the Knative service (service_name), not the model.
        without_model={"kserve_queue_proxy_5xx_ratio", "kserve_queue_proxy_latency_p99_seconds", "kserve_queue_proxy_depth"},
    )


def generic_data(s: Samples) -> Expect:
    """Four services, one per HTTP metrics convention."""
    buckets = {"0.05": 0.3, "0.1": 0.7, "0.25": 0.95, "0.5": 0.99, "1.0": 1.0, "+Inf": 1.0}
    # client_golang promhttp: http_requests_total{code}, with a `model` label added by the service.
    go = {**target("web", "go-api-0", "go-api", "app"), "model": "fraud-v3", "handler": "/predict", "method": "post"}
    s.histogram("http_request_duration_seconds", go, 21.0, buckets, mean=0.1)
    s.counter("http_requests_total", {**go, "code": "200"}, 20.0)
    s.counter("http_requests_total", {**go, "code": "500"}, 1.0)
    s.gauge("process_resident_memory_bytes", target("web", "go-api-0", "go-api", "app"), 2e8)
    # prometheus-fastapi-instrumentator: http_requests_total{status="2xx"}, duration without status.
    fa = {**target("web", "fastapi-0", "fastapi", "app"), "handler": "/predict", "method": "POST"}
    s.histogram("http_request_duration_seconds", fa, 5.25, buckets, mean=0.1)
    s.counter("http_requests_total", {**fa, "status": "2xx"}, 5.0)
    s.counter("http_requests_total", {**fa, "status": "5xx"}, 0.25)
    s.gauge("process_resident_memory_bytes", target("web", "fastapi-0", "fastapi", "app"), 5e8)
    # Micrometer (Spring Boot) with percentiles-histogram on; no 5xx yet.
    sp = {**target("web", "spring-0", "spring", "app"), "exception": "None", "method": "POST", "outcome": "SUCCESS", "status": "200", "uri": "/predict"}
    s.histogram("http_server_requests_seconds", sp, 6.0, buckets, mean=0.1)
    for area, pool, used in (("heap", "G1 Eden Space", 1e8), ("heap", "G1 Old Gen", 3e8), ("nonheap", "Metaspace", 5e7)):
        s.gauge("jvm_memory_used_bytes", {**target("web", "spring-0", "spring", "app"), "area": area, "id": pool}, used)
    # OpenTelemetry semantic conventions, exported to Prometheus.
    ot = {**target("web", "otel-0", "otel", "app"), "http_request_method": "POST", "http_route": "/predict"}
    for code, per_second in (("200", 8.0), ("503", 0.4)):
        s.histogram("http_server_request_duration_seconds", {**ot, "http_response_status_code": code}, per_second, buckets, mean=0.1)
    return Expect(
        namespace="web",
        pods={"go-api-0", "fastapi-0", "spring-0", "otel-0"},
        models={"fraud-v3"},  # only the go service sets a model label
        pods_for={"process_memory_bytes": {"go-api-0", "fastapi-0", "spring-0"}},
        values={
            "http_5xx_ratio": {at(pod="go-api-0"): 1 / 21, at(pod="fastapi-0"): 0.25 / 5.25, at(pod="spring-0"): 0.0, at(pod="otel-0"): 0.4 / 8.4},
            "http_request_rate": {at(pod="go-api-0", model="fraud-v3"): 21.0, at(pod="otel-0"): 8.4},
            "process_memory_bytes": {at(pod="go-api-0"): 2e8, at(pod="fastapi-0"): 5e8, at(pod="spring-0"): 4e8},
            "http_request_rate_daily": {at(job="spring"): 6.0},
        },
        without_model={"process_memory_bytes"},
    )


DATA = {"vllm": vllm_data, "triton": triton_data, "torchserve": torchserve_data, "kserve": kserve_data, "generic-http": generic_data}


@dataclass
class Backfilled:
    prometheus: Prometheus
    client: PrometheusClient
    end: float
    expect: dict[str, Expect]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Backfilled:
    end = float(np.floor(time.time())) - 1
    samples = Samples(np.arange(end - DATA_SPAN, end + 1e-6, DATA_STEP))
    expect = {name: make(samples) for name, make in DATA.items()}
    prom = Prometheus(tmp_path_factory.mktemp("presets-prom"))
    prom.backfill(openmetrics(samples.rows, samples.types))
    prom.start()
    client = PrometheusClient(PrometheusSettings(url=prom.url, retries=0))
    yield Backfilled(prom, client, end, expect)
    client.close()
    prom.stop()


# -- Prometheus parses every expression ------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_prometheus_parses_and_type_checks_every_expression(stack, preset):
    for spec in load_config(preset).queries:
        stack.client.check_expression(spec.expr)  # raises QueryError(bad_data) on a parse or type error
        empty = stack.client.query_range(spec.expr, 1000.0, 1000.0 + 20 * spec.step, spec.step)  # 1970: no data
        assert empty.n_series == 0, (spec.name, empty.labels)


@pytest.mark.integration
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_the_documented_check_config_command_accepts_the_preset(stack, preset, capsys):
    rc = cli.main(["check-config", str(preset), "--prometheus-url", stack.prometheus.url])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "expressions OK" in out, out


# -- every query finds the series it is written for ------------------------------------------
def _value_at_end(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite[-1]) if finite.size else math.nan


@pytest.mark.integration
@pytest.mark.parametrize("preset", [p for p in PRESETS if p.stem in DATA], ids=lambda p: p.stem)
def test_every_query_returns_the_expected_series_from_the_stacks_real_metric_names(stack, preset):
    expect = stack.expect[preset.stem]
    model_label = MODEL_LABELS[preset.stem]
    checked_values = set()
    for spec in load_config(preset).queries:
        result = stack.client.query_range(spec.expr, stack.end - CHECK_WINDOW, stack.end, 30.0)
        what = f"{preset.name}: {spec.name}"
        assert result.n_series > 0, f"{what} returns no series from the synthetic {preset.stem} metrics"
        keep = grouping_labels(spec.expr)
        assert (model_label in keep) == (spec.name not in expect.without_model), f"{what}: model label {model_label} kept: {model_label in keep}"
        for labels, values in zip(result.labels, result.values):
            assert labels.get("namespace") == expect.namespace, (what, labels)
            assert set(labels) <= keep, f"{what}: labels {sorted(set(labels) - keep)} beyond its by clause: {labels}"
            # Finite everywhere: guarded ratios give no point for idle models instead of NaN/Inf.
            assert np.isfinite(values).all(), f"{what}: non-finite values for {labels}: {values}"
        if "pod" in keep:
            pods = {lbl.get("pod") for lbl in result.labels}
            assert pods == expect.pods_for.get(spec.name, expect.pods), (what, pods)
        if model_label in keep and preset.stem != "generic-http":
            models = {lbl.get(model_label) for lbl in result.labels}
            assert models == expect.models_for.get(spec.name, expect.models), (what, models)
        for subset, value in expect.values.get(spec.name, {}).items():
            matches = [v for lbl, v in zip(result.labels, result.values) if subset <= set(lbl.items())]
            assert matches, f"{what}: no series with {dict(subset)} in {result.labels}"
            for v in matches:
                assert _value_at_end(v) == pytest.approx(value, rel=1e-6, abs=1e-9), (what, dict(subset))
            checked_values.add(spec.name)
    assert checked_values == set(expect.values), f"expected values for unknown queries: {set(expect.values) - checked_values}"


@pytest.mark.integration
def test_vllm_queries_work_across_the_renamed_metrics(stack):
    """vllm-llama-0 exports only the v0.11+ names, vllm-mistral-0 only the old ones, vllm-llama-1
    both: every pod has exactly one series, and a pod exporting both is not counted twice."""
    queries = {q.name: q.expr for q in load_config(PRESETS_DIR / "vllm.yaml").queries}
    for name in ("vllm_kv_cache_usage", "vllm_inter_token_latency_p95"):
        series = stack.prometheus.query(queries[name], at=stack.end)
        assert sorted(s["metric"]["pod"] for s in series) == ["vllm-llama-0", "vllm-llama-1", "vllm-mistral-0"], (name, series)
    # The same inter-token distribution under either name gives the same p95, inside its bucket.
    p95 = {float(s["value"][1]) for s in stack.prometheus.query(queries["vllm_inter_token_latency_p95"], at=stack.end)}
    assert len(p95) == 1 and 0.025 < p95.pop() <= 0.05


@pytest.mark.integration
def test_triton_idle_model_gets_no_ratio_point_instead_of_nan(stack):
    """A loaded model without traffic: 0/0 in every ratio. The `> 0` guards drop the point."""
    queries = {q.name: q.expr for q in load_config(PRESETS_DIR / "triton.yaml").queries}
    for name in ("triton_request_latency_avg_seconds", "triton_failure_ratio", "triton_avg_batch_size"):
        models = {s["metric"]["model"] for s in stack.prometheus.query(queries[name], at=stack.end)}
        assert "ensemble-idle" not in models and models == {"resnet50", "bert"}, (name, models)
    unguarded = "sum by (model) (rate(nv_inference_request_duration_us[5m])) / sum by (model) (rate(nv_inference_request_success[5m]))"
    raw = {s["metric"]["model"]: s["value"][1] for s in stack.prometheus.query(unguarded, at=stack.end)}
    assert raw["ensemble-idle"] == "NaN"  # what the guard prevents


# -- the sidecar scores every preset query ---------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("preset", [p for p in PRESETS if p.stem in DATA], ids=lambda p: p.stem)
def test_one_scoring_cycle_of_the_preset_succeeds_for_every_query(stack, preset, capsys):
    rc = cli.main(["score", "--config", str(preset), "--prometheus-url", stack.prometheus.url, "--format", "json", "--log-level", "error"])
    report = json.loads(capsys.readouterr().out)
    by_name = {q["name"]: q for q in report["queries"]}
    failed = {n: q["error"] for n, q in by_name.items() if not q["success"]}
    assert rc == 0 and not failed, failed
    for q in raw_queries(preset):
        got = by_name[q["name"]]
        assert got["series_returned"] > 0, (q["name"], got)
        if detector_type(q) == "seasonal":
            # Half an hour of data is not two days: returned, but not scored yet.
            assert got["series_not_ready"] == got["series_returned"], (q["name"], got)
        else:
            assert got["series_scored"] > 0, (q["name"], got)
