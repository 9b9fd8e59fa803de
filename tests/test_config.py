"""Config validation: the minimal file is accepted; every error names its key path."""

import subprocess
import sys
import textwrap

import pytest

from sidecar.config import ConfigError, load_config, parse_config
from sidecar.detectors import DEFAULT_DETECTOR

MINIMAL = """
prometheus:
  url: http://localhost:9090
queries:
  - name: request_latency_p99
    expr: histogram_quantile(0.99, sum by (le, model) (rate(model_request_duration_seconds_bucket[1m])))
    detector: robust_zscore
    interval: 30s
    step: 15s
    history: 2h
"""


def write(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(data):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return dict(err.value.problems)


def base(**query):
    q = {"name": "q", "expr": "up", **query}
    return {"prometheus": {"url": "http://localhost:9090"}, "queries": [q]}


def test_the_minimal_config_from_the_issue_is_accepted_as_is(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    (q,) = cfg.queries
    assert (q.name, q.interval, q.step, q.history) == ("request_latency_p99", 30, 15, 7200)
    assert q.detector_name == "robust_zscore"
    assert q.history_points == 480
    assert cfg.prometheus.url == "http://localhost:9090"
    assert cfg.server.listen == "0.0.0.0:9710"


def test_defaults_apply_to_every_query_and_queries_override_them():
    cfg = parse_config(
        {
            "prometheus": {"url": "http://p:9090"},
            "defaults": {"interval": "1m", "step": "1m", "history": "1d", "detector": {"type": "zscore", "sensitivity": 4}},
            "queries": [{"name": "a", "expr": "up"}, {"name": "b", "expr": "up", "interval": "10s", "detector": "ewma"}],
        }
    )
    a, b = cfg.queries
    assert (a.interval, a.step, a.history, a.detector_name) == (60, 60, 86400, "zscore")
    assert a.detector().sensitivity == 4
    assert (b.interval, b.step, b.detector_name) == (10, 60, "ewma")


def test_no_detector_means_the_recommended_default():
    (q,) = parse_config(base()).queries
    assert q.detector_name == DEFAULT_DETECTOR
    assert q.detector().name == DEFAULT_DETECTOR


def test_series_ttl_defaults_to_at_least_five_minutes_and_three_intervals():
    assert parse_config(base(interval="30s")).queries[0].series_ttl == 300
    assert parse_config(base(interval="10m", step="1m")).queries[0].series_ttl == 1800


@pytest.mark.parametrize(
    "data, path, fragment",
    [
        (base(intervall="30s"), "queries[0].intervall", "unknown key (did you mean 'interval'?)"),
        (base(interval="3x"), "queries[0].interval", "invalid duration '3x'"),
        (base(interval=30), "queries[0].interval", "give a unit"),
        (base(name=""), "queries[0].name", "must not be empty"),
        (base(expr="  "), "queries[0].expr", "must not be empty"),
        (base(detector="nope"), "queries[0].detector", "unknown detector 'nope'"),
        (base(detector={"type": "zscore", "sensitivty": 3}), "queries[0].detector.sensitivty", "unknown parameter"),
        (base(detector={"type": "zscore", "sensitivity": -1}), "queries[0].detector.sensitivity", "must be > 0"),
        (base(detector={"type": "zscore", "sensitivity": "high"}), "queries[0].detector.sensitivity", "must be a finite number"),
        (base(detector={"sensitivity": 3}), "queries[0].detector.type", "needs 'type: NAME'"),
        (base(detector={"type": "seasonal", "period": "1x"}), "queries[0].detector.period", "invalid duration"),
        (base(detector={"type": "static_threshold"}), "queries[0].detector.max", "set min, max or both"),
        (base(step="1m", history="2m"), "queries[0].history", "at least 3 steps"),
        (base(interval="500ms"), "queries[0].interval", "at least 1s"),
        (base(interval="10m", series_ttl="1m"), "queries[0].series_ttl", "at least the interval and the step"),
        (base(interval="10s", step="1m", series_ttl="30s"), "queries[0].series_ttl", "at least the interval and the step (1m)"),
        (base(max_series=0), "queries[0].max_series", "greater than or equal to 1"),
        (base(counters="sometimes"), "queries[0].counters", "'auto', 'rate' or 'raw'"),
        ({"prometheus": {"url": "ftp://x"}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.url", "http:// or https://"),
        ({"prometheus": {"url": "http://x", "timeout": "0s"}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.timeout", "positive"),
        ({"prometheus": {"url": "http://x", "headers": {"X-Scope-OrgID": 5}}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.headers.X-Scope-OrgID", "valid string"),
        ({"prometheus": {"url": "http://x"}, "queries": []}, "queries", "at least 1 item"),
        ({"prometheus": {"url": "http://x"}}, "queries", "required key is missing"),
        ({"queries": [{"name": "q", "expr": "up"}]}, "prometheus", "required key is missing"),
        ({"prometheus": {"url": "http://x"}, "server": {"listen": "9710"}, "queries": [{"name": "q", "expr": "up"}]}, "server.listen", "HOST:PORT"),
        ({"prometheus": {"url": "http://x", "basic_auth": {"username": "u"}}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.basic_auth", "exactly one of password or password_file"),
        ({"prometheus": {"url": "http://x", "tls": {"cert_file": "/c"}}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.tls", "go together"),
        ({"prometheus": {"url": "http://x", "bearer_token_file": "/nonexistent/token"}, "queries": [{"name": "q", "expr": "up"}]}, "prometheus.bearer_token_file", "cannot read file"),
        ({"prometheus": {"url": "http://x"}, "defaults": {"detector": "nope"}, "queries": [{"name": "q", "expr": "up"}]}, "defaults.detector", "unknown detector"),
    ],
)
def test_each_config_error_names_its_key_path(data, path, fragment):
    found = problems(data)
    assert path in found, found
    assert fragment in found[path]


def test_duplicate_query_names_are_rejected():
    data = base()
    data["queries"].append({"name": "q", "expr": "up"})
    assert "duplicate query name 'q' (also queries[0])" in problems(data)["queries[1].name"]


def test_every_problem_is_reported_at_once_in_document_order():
    data = {
        "prometheus": {"url": "nope", "timout": "1s"},
        "queries": [
            {"name": "a", "expr": "up", "step": "3x", "detector": {"type": "zscore", "sensitivity": 0}},
            {"name": "a", "expr": "up"},
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    paths = [p for p, _ in err.value.problems]
    assert paths == ["prometheus.timout", "prometheus.url", "queries[0].detector.sensitivity", "queries[0].step", "queries[1].name"]
    assert str(err.value).startswith("5 config errors")


def test_yaml_duplicate_keys_are_an_error_not_silently_the_last_one(tmp_path):
    p = write(tmp_path, "prometheus:\n  url: http://a:9090\n  url: http://b:9090\nqueries: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "duplicate key 'url' (first at line 2)" in str(err.value)


def test_yaml_syntax_errors_give_line_and_column(tmp_path):
    p = write(tmp_path, "prometheus:\n  url: [http://a\nqueries: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "invalid YAML: line" in str(err.value)


@pytest.mark.parametrize("text, fragment", [("", "the config is empty"), ("- a\n- b\n", "must be a mapping")])
def test_empty_or_non_mapping_files_are_explained(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert fragment in str(err.value)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read config file" in str(err.value)


def test_command_line_overrides_are_validated_too(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    over = cfg.with_overrides(prometheus_url="https://mimir.example:8080/prometheus/", listen="127.0.0.1:9999")
    assert over.prometheus.url == "https://mimir.example:8080/prometheus"
    assert over.server.listen == "127.0.0.1:9999"
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides(prometheus_url="localhost:9090", listen="nope")
    assert [p for p, _ in err.value.problems] == ["--prometheus-url", "--listen"]


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"], ["score", "--config"]])
def test_config_errors_exit_2_with_the_key_path_on_stderr(tmp_path, command):
    p = write(tmp_path, MINIMAL.replace("interval: 30s", "interval: soon"))
    out = subprocess.run([sys.executable, "-m", "sidecar", *command, str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "queries[0].interval: invalid duration 'soon'" in out.stderr
    assert out.stdout == ""


def test_check_config_offline_accepts_a_valid_file(tmp_path):
    p = write(tmp_path, MINIMAL)
    out = subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--offline", str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "config OK, 1 query" in out.stdout
    assert "request_latency_p99: every 30s, step 15s, history 2h, detector robust_zscore" in out.stdout


def test_refit_interval_defaults_to_the_detectors_recommendation():
    from sidecar.detectors import available

    queries = parse_config(
        {
            "prometheus": {"url": "http://p:9090"},
            "queries": [
                {"name": "cheap", "expr": "up", "detector": "robust_zscore"},
                {"name": "default", "expr": "up"},
                {"name": "ml", "expr": "up", "detector": "forest"},
                {"name": "mine", "expr": "up", "detector": "forest", "refit_interval": "5m"},
            ],
        }
    ).queries
    got = {q.name: q.refit_interval for q in queries}
    assert got == {
        "cheap": 0.0,
        "default": available()[DEFAULT_DETECTOR].recommended_refit_interval,
        "ml": available()["forest"].recommended_refit_interval,
        "mine": 300.0,
    }
    assert got["ml"] > 0 and got["default"] > 0
