"""Unit tests of the response parser and the client's error handling, on recorded responses."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from sidecar.config import parse_config
from sidecar.prometheus import PrometheusClient, QueryError, grid, parse_matrix

# Recorded from Prometheus 2.42: `query_range?query=...&start=100&end=160&step=15`
RECORDED = json.loads(
    """{"status":"success","data":{"resultType":"matrix","result":[
    {"metric":{"__name__":"lat","model":"a"},"values":[[100,"0.5"],[115,"NaN"],[130,"+Inf"],[160,"-Inf"]]},
    {"metric":{"model":"b"},"values":[[145,"1e-3"],[160,"2"]]},
    {"metric":{},"values":[]}]}}"""
)


def test_grid_matches_prometheus_evaluation_timestamps():
    np.testing.assert_array_equal(grid(100, 160, 15), [100, 115, 130, 145, 160])
    np.testing.assert_array_equal(grid(100, 170, 15), [100, 115, 130, 145, 160])
    assert grid(100, 100, 15).size == 1


def test_matrix_parses_onto_the_grid_with_nan_inf_and_gaps():
    ts = grid(100, 160, 15)
    labels, values = parse_matrix(RECORDED["data"], ts, 15)
    assert labels == [{"__name__": "lat", "model": "a"}, {"model": "b"}, {}]
    expected = np.array(
        [[0.5, np.nan, np.inf, np.nan, -np.inf], [np.nan, np.nan, np.nan, 1e-3, 2.0], [np.nan] * 5]
    )
    np.testing.assert_array_equal(values, expected)


def test_points_outside_the_grid_are_ignored():
    ts = grid(100, 130, 15)
    _, values = parse_matrix({"resultType": "matrix", "result": [{"metric": {}, "values": [[85, "1"], [100, "2"], [175, "3"]]}]}, ts, 15)
    np.testing.assert_array_equal(values, [[2.0, np.nan, np.nan]])


@pytest.mark.parametrize(
    "data",
    [
        {"resultType": "vector", "result": []},
        {"resultType": "matrix", "result": [{"values": [[100, "1"]]}]},
        {"resultType": "matrix", "result": [{"metric": {}, "values": [[100, "one"]]}]},
        "garbage",
    ],
)
def test_malformed_responses_are_parse_errors(data):
    with pytest.raises(QueryError) as err:
        parse_matrix(data, grid(100, 160, 15), 15)
    assert err.value.reason == "parse"


class _Recorded(BaseHTTPRequestHandler):
    """Replays a list of recorded (status, body) answers; counts the requests."""

    answers: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append((self.path, self.rfile.read(length).decode(), dict(self.headers)))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorded():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    _Recorded.seen = []
    yield server
    server.shutdown()
    server.server_close()


def client_for(server, tmp_path=None, **prom):
    cfg = parse_config({"prometheus": {"url": f"http://127.0.0.1:{server.server_address[1]}", **prom}, "queries": [{"name": "q", "expr": "up"}]})
    return PrometheusClient(cfg.prometheus, sleep=lambda s: None)


OK_BODY = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})


def test_5xx_is_retried_then_succeeds(recorded):
    _Recorded.answers = [(503, "overloaded"), (502, "bad gateway"), (200, OK_BODY)]
    result = client_for(recorded, retries=2).query_range("up", 100, 160, 15)
    assert result.n_series == 0 and len(_Recorded.seen) == 3


def test_5xx_gives_up_after_the_configured_retries(recorded):
    _Recorded.answers = [(500, "boom")]
    with pytest.raises(QueryError) as err:
        client_for(recorded, retries=1).query_range("up", 100, 160, 15)
    assert err.value.reason == "http" and len(_Recorded.seen) == 2


@pytest.mark.parametrize(
    "status, body, reason",
    [
        (400, '{"status":"error","errorType":"bad_data","error":"parse error: unexpected end of input"}', "bad_data"),
        (422, '{"status":"error","errorType":"execution","error":"query processing would load too many samples"}', "execution"),
        (401, "Unauthorized", "auth"),
        (404, "404 page not found", "http"),
    ],
)
def test_4xx_is_not_retried_and_is_classified(recorded, status, body, reason):
    _Recorded.answers = [(status, body)]
    with pytest.raises(QueryError) as err:
        client_for(recorded, retries=3).query_range("up", 100, 160, 15)
    assert err.value.reason == reason
    assert len(_Recorded.seen) == 1


def test_bad_data_says_it_is_the_expression(recorded):
    _Recorded.answers = [(400, '{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}')]
    with pytest.raises(QueryError, match="Prometheus rejected the expression: 1:5: parse error"):
        client_for(recorded).query_range("sum(", 100, 160, 15)


def test_connection_refused_is_retried_and_reported(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = parse_config({"prometheus": {"url": f"http://127.0.0.1:{port}", "retries": 2}, "queries": [{"name": "q", "expr": "up"}]})
    delays = []
    client = PrometheusClient(cfg.prometheus, sleep=delays.append)
    with pytest.raises(QueryError) as err:
        client.query_range("up", 100, 160, 15)
    assert err.value.reason == "connection" and "connection refused" in str(err.value)
    assert len(delays) == 2 and delays[1] > delays[0] * 0.6


def test_headers_bearer_token_and_tenant_are_sent(recorded, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    _Recorded.answers = [(200, OK_BODY)]
    client = client_for(recorded, bearer_token_file=str(token), headers={"X-Scope-OrgID": "team-a"})
    client.query_range("up", 100, 160, 15)
    token.write_text("rotated")  # service-account tokens rotate under a running pod
    client.query_range("up", 100, 160, 15)
    (_, form, h1), (_, _, h2) = _Recorded.seen
    assert h1["Authorization"] == "Bearer s3cret" and h2["Authorization"] == "Bearer rotated"
    assert h1["X-Scope-OrgID"] == "team-a"
    assert "query=up" in form and "step=15" in form


def test_basic_auth_reads_the_password_file(recorded, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    _Recorded.answers = [(200, OK_BODY)]
    client_for(recorded, basic_auth={"username": "u", "password_file": str(pw)}).query_range("up", 100, 160, 15)
    import base64

    assert _Recorded.seen[0][2]["Authorization"] == "Basic " + base64.b64encode(b"u:hunter2").decode()
