"""Backtests: CSV files and Prometheus history replayed causally, alerts, evaluation, outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from servers import Prometheus
from sidecar import backtest as bt
from sidecar.config import parse_config
from sidecar.detectors import DEFAULT_DETECTOR
from sidecar.prometheus import PrometheusClient
from sidecar.scoring import QueryRunner

STEP = 300.0
T0 = 1_700_000_000.0


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sidecar", "backtest", *args], capture_output=True, text=True, timeout=120)


def write_csv(path: Path, values, t0=T0, step=STEP, iso=True, columns=("value",)):
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.atleast_2d(np.asarray(values, dtype=float).T).T if np.ndim(values) == 1 else np.asarray(values)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *columns])
        for i, row in enumerate(values.reshape(len(values), -1)):
            ts = t0 + i * step
            stamp = np.datetime_as_string(np.datetime64(int(ts), "s")).replace("T", " ") if iso else f"{ts:.0f}"
            w.writerow([stamp, *(repr(float(v)) for v in row)])
    return path


def noisy(n=1500, spike_at=1200, spike_len=4, seed=0):
    v = np.random.default_rng(seed).normal(50, 1, n)
    v[spike_at : spike_at + spike_len] += 15
    return v


def read_out(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


# -- reading files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, where, fragment",
    [
        ("2020-01-01 00:00:00,1\n2020-01-01 00:05:00,2\n", ":1:", "no header"),
        ("timestamp,value\n2020-01-01 00:00:00,1\nyesterday,2\n", ":3:", "unparsable timestamp 'yesterday'"),
        ("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,lots\n", ":3:", "not a number: 'lots'"),
        ("timestamp,value\n2020-01-01 00:05:00,1\n2020-01-01 00:00:00,2\n", ":3:", "not sorted"),
        ("timestamp,value\n2020-01-01 00:05:00,1\n2020-01-01 00:05:00,2\n", ":3:", "duplicated"),
        ("timestamp,value\n2020-01-01 00:05:00,1,7\n", ":2:", "expected 2 fields"),
        ("timestamp,value\n", ":", "no data rows"),
        ("", ":", "empty file"),
        ("timestamp,a,a\n1,2,3\n", ":1:", "unique"),
    ],
)
def test_bad_files_name_the_file_and_line_and_exit_2(tmp_path, content, where, fragment):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    out = cli("--csv", str(p))
    assert out.returncode == 2
    assert f"{p}{where}" in out.stderr and fragment in out.stderr, out.stderr
    with pytest.raises(bt.BadInput):
        bt.read_csv(p)


def test_timestamps_may_be_iso_with_zones_or_unix_seconds(tmp_path):
    p = tmp_path / "z.csv"
    p.write_text("timestamp,value\n2020-01-01T00:00:00Z,1\n2020-01-01T01:05:00+01:00,2\n2020-01-01 00:10:00.5,\n")
    t = bt.read_csv(p)
    np.testing.assert_allclose(t.timestamps - t.timestamps[0], [0, 300, 600.5])
    assert np.isnan(t.values[2, 0])  # an empty cell is a gap
    u = bt.read_csv(write_csv(tmp_path / "u.csv", [1, 2, 3], iso=False))
    np.testing.assert_allclose(u.timestamps, [T0, T0 + 300, T0 + 600])


def test_file_order_accepts_a_repeated_dst_hour(tmp_path):
    p = tmp_path / "dst.csv"
    rows = ["timestamp,value"] + [f"2014-03-09 0{h}:{m:02d}:00,{i}" for i, (h, m) in enumerate([(1, 50), (1, 55), (3, 0), (3, 0), (3, 5)])]
    p.write_text("\n".join(rows) + "\n")
    assert cli("--csv", str(p)).returncode == 2
    out = cli("--csv", str(p), "--file-order", "--output", str(tmp_path / "o.csv"))
    assert out.returncode == 0, out.stderr
    assert [r["timestamp"] for r in read_out(tmp_path / "o.csv")] == [r.split(",")[0] for r in rows[1:]]


# -- alerts and evaluation ------------------------------------------------------------------
def test_alerts_need_the_score_above_the_threshold_for_the_whole_for_duration():
    t = T0 + 60.0 * np.arange(20)
    s = np.zeros(20)
    s[2:5] = 2  # 2 minutes above: too short for 5m
    s[8:15] = 3  # 6 minutes above: fires at its 5-minute mark
    s[16:20] = 2
    s[18] = np.nan  # a gap breaks the run
    alerts = bt.alerts_from_scores(t, s, threshold=1, for_=300)
    assert len(alerts) == 1
    (a,) = alerts
    assert (a.start, a.fired, a.end, a.peak) == (t[8], t[13], t[14], 3.0)
    assert bt.alerts_from_scores(t, s, threshold=1, for_=0)[0].fired == t[2]
    assert bt.alerts_from_scores(t, np.where(s == 1, 1, s) * 0 + 1, threshold=1, for_=0) == []  # exactly 1 is the band edge


def test_evaluation_counts_detected_windows_false_alerts_and_delay():
    alerts = [bt.Alert(fired=f, start=f, end=f, peak=2) for f in (150.0, 170.0, 500.0, 900.0)]
    ev = bt.evaluate(alerts, [(100.0, 200.0), (450.0, 460.0), (880.0, 1000.0)])
    assert (ev.windows, ev.detected, ev.alerts, ev.true_alerts) == (3, 2, 4, 3)
    assert ev.precision == 0.75 and ev.recall == pytest.approx(2 / 3)
    assert ev.f1 == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert ev.delays == [50.0, 20.0]


# -- CSV backtests ---------------------------------------------------------------------------
def test_a_csv_is_scored_row_for_row_and_the_injected_spike_alerts(tmp_path):
    src = write_csv(tmp_path / "in.csv", noisy())
    out = cli("--csv", str(src), "--output", str(tmp_path / "out.csv"), "--history", "500", "--alert-for", "10m", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = read_out(tmp_path / "out.csv")
    assert list(rows[0]) == ["timestamp", "value", "score", "expected", "lower", "upper"]
    assert len(rows) == 1500 and rows[0]["timestamp"] == "2023-11-14 22:13:20"
    score = np.array([float(r["score"]) if r["score"] else np.nan for r in rows])
    assert np.all(score[1200:1204] > 1)
    report = json.loads(out.stdout)["files"][0]
    assert [a["start"] for a in report["alerts"]] == [bt._iso(T0 + 1200 * STEP)]
    assert report["anomalous"] < 20


def test_csv_scores_are_causal(tmp_path):
    a = write_csv(tmp_path / "a.csv", noisy())
    changed = noisy()
    changed[1000:] += 100
    b = write_csv(tmp_path / "b.csv", changed)
    for src in (a, b):
        assert cli("--csv", str(src), "--output", str(src.with_suffix(".out")), "--history", "300").returncode == 0
    ra, rb = read_out(a.with_suffix(".out")), read_out(b.with_suffix(".out"))
    assert ra[:1000] == rb[:1000] and ra[1000] != rb[1000]


def test_missing_rows_are_gaps_not_compressed_time(tmp_path):
    v = noisy(n=800, spike_at=700)
    t = T0 + STEP * np.arange(800)
    keep = np.ones(800, bool)
    keep[100:300] = False  # a 16-hour hole in the file
    p = tmp_path / "gappy.csv"
    p.write_text("timestamp,value\n" + "".join(f"{ts:.0f},{float(x)!r}\n" for ts, x in zip(t[keep], v[keep])))
    table = bt.read_csv(p)
    from sidecar.detectors import build

    s = bt.score_table(table, build("robust_zscore"), history=300, refit_every=1)
    assert s.score.shape == (1, 600)
    # Row 400 of the file is 600 points after the start: the fit window reaches into the hole.
    assert np.all(s.score[0, 500:504] > 1) and np.isnan(s.score[0, :30]).all()


def test_a_folder_keeps_its_structure_and_labels_give_precision_recall_and_delay(tmp_path):
    src = tmp_path / "data"
    write_csv(src / "a" / "one.csv", noisy(seed=1))
    write_csv(src / "b" / "two.csv", noisy(seed=2, spike_at=900))
    write_csv(src / "b" / "clean.csv", noisy(seed=3, spike_len=0))
    labels = tmp_path / "labels.json"
    iso = lambda i: np.datetime_as_string(np.datetime64(int(T0 + i * STEP), "s")).replace("T", " ")  # noqa: E731
    labels.write_text(json.dumps({"a/one.csv": [[iso(1190), iso(1220)]], "b/two.csv": [[iso(890), iso(920)]], "b/clean.csv": []}))
    out = cli("--csv", str(src), "--labels", str(labels), "--output", str(tmp_path / "out"), "--history", "500", "--alert-for", "5m", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.csv")) == ["a/one.csv", "b/clean.csv", "b/two.csv"]
    result = json.loads(out.stdout)
    ev = result["summary"]["evaluation"]
    assert ev["windows"] == 2 and ev["detected_windows"] == 2
    assert ev["recall"] == 1.0 and ev["precision"] == ev["detected_windows"] / ev["alerts"]
    assert ev["median_delay_seconds"] == pytest.approx(10 * STEP + 300)  # 10 points into the window, plus for: 5m
    table = cli("--csv", str(src), "--labels", str(labels), "--history", "500")
    assert "2/2 windows detected" in table.stdout and "precision" in table.stdout


def test_train_file_fits_once_before_scoring(tmp_path):
    train = write_csv(tmp_path / "train.csv", np.random.default_rng(5).normal(50, 1, 600))
    test = write_csv(tmp_path / "test.csv", noisy(n=300, spike_at=200), t0=T0 + 600 * STEP)
    out = cli("--csv", str(test), "--train", str(train), "--output", str(tmp_path / "o.csv"), "--format", "json")
    assert out.returncode == 0, out.stderr
    score = np.array([float(r["score"]) for r in read_out(tmp_path / "o.csv")])
    assert not np.isnan(score).any()  # the training file makes every test row scorable
    assert np.all(score[200:204] > 1) and np.mean(score[:200] > 1) < 0.02


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--detector", "nope"], "unknown detector 'nope'"),
        (["--detector", "{type: zscore, sensitivity: -2}"], "--detector.sensitivity: must be > 0"),
        (["--alert-for", "soon"], "--alert-for: invalid duration"),
        (["--history", "0"], "at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, fragment):
    src = write_csv(tmp_path / "in.csv", noisy(n=100))
    out = cli("--csv", str(src), *args)
    assert out.returncode == 2 and fragment in out.stderr, out.stderr


def test_either_config_or_csv_is_required():
    assert cli().returncode == 2
    assert "either --config" in cli().stderr


def test_inline_json_detector_specs_are_accepted(tmp_path):
    src = write_csv(tmp_path / "in.csv", noisy(n=400, spike_at=350))
    out = cli("--csv", str(src), "--detector", '{"type": "zscore", "sensitivity": 4}', "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)["files"][0]["detector"] == "zscore"


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    src = write_csv(tmp_path / "in.csv", noisy(n=600, spike_at=500))
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps({"in.csv": [["2023-11-16 15:00:00", "2023-11-16 16:00:00"]]}))
    out = cli("--csv", str(src), "--plot", str(tmp_path / "p.png"), "--labels", str(labels), "--history", "300")
    assert out.returncode == 0, out.stderr
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_openmetrics_output_backfills_into_prometheus(tmp_path):
    write_csv(tmp_path / "svc" / "latency.csv", noisy(n=400, spike_at=350), t0=T0)
    om = tmp_path / "scores.om"
    out = cli("--csv", str(tmp_path / "svc"), "--openmetrics", str(om), "--history", "200", "--label", "backtest=yes")
    assert out.returncode == 0, out.stderr
    prom = Prometheus(tmp_path / "p")
    (tmp_path / "p").mkdir()
    prom.backfill(om.read_text())
    prom.start()
    try:
        at = T0 + 351 * STEP
        res = prom.query('anomaly_score{query="backtest",file="latency.csv",backtest="yes"}', at=at)
        assert len(res) == 1 and float(res[0]["value"][1]) > 1
        assert res[0]["metric"]["detector"] == DEFAULT_DETECTOR
        assert float(prom.query("anomaly_score", at=T0 + 300 * STEP)[0]["value"][1]) < 1
        assert float(prom.query("anomaly_upper - anomaly_lower", at=at)[0]["value"][1]) > 0
    finally:
        prom.stop()


# -- Prometheus history -------------------------------------------------------------------
def write_config(tmp_path, url, **query):
    p = tmp_path / "c.yaml"
    q = {"name": "latency", "expr": "model_latency_seconds", "interval": "15s", "step": "15s", "history": "1h", **query}
    p.write_text(yaml.safe_dump({"prometheus": {"url": url, "retries": 0}, "queries": [q]}))
    return p


def test_prometheus_history_replay_reports_the_alert_of_the_injected_anomaly(tmp_path, history):
    cfg = write_config(tmp_path, history.prometheus.url)
    end = history.end
    out = cli("--config", str(cfg), "--start", str(end - 1800), "--end", str(end), "--alert-for", "1m", "--format", "json")
    assert out.returncode == 0, out.stderr
    (q,) = json.loads(out.stdout)["queries"]
    by_model = {s["labels"]["model"]: s for s in q["series"]}
    assert set(by_model) == {"m1", "m2", "m3", "m4"}
    points = np.arange(np.ceil((end - 1800) / 15) * 15, end + 1e-9, 15).size  # the step grid in [start, end]
    assert by_model["m4"]["points"] == points and by_model["m4"]["anomalous"] >= 10
    assert len(by_model["m4"]["alerts"]) == 1 and all(not by_model[m]["alerts"] for m in ("m1", "m2", "m3"))
    om = tmp_path / "replay.om"
    text = cli("--config", str(cfg), "--start", str(end - 1800), "--end", str(end), "--alert-for", "1m", "--openmetrics", str(om), "--label", "backtest=1")
    lines = [line for line in om.read_text().splitlines() if line.startswith("anomaly_score{")]
    assert len(lines) == 4 * points
    assert all('backtest="1"' in line and 'query="latency"' in line and 'namespace="serving"' in line for line in lines)
    assert 'model="m4"' in text.stdout.splitlines()[4] and f"total: 4 series, {4 * points} points" in text.stdout


def test_prometheus_backtest_scores_what_the_live_sidecar_scores(history):
    """The last point of a backtest equals the live cycle's score at the same moment."""
    cfg = parse_config(
        {
            "prometheus": {"url": history.prometheus.url},
            # Refit every cycle: the live and the replayed fits then cover exactly the same points.
            "queries": [{"name": "q", "expr": "model_latency_seconds", "interval": "15s", "step": "15s", "history": "1h", "refit_interval": "0s"}],
        }
    )
    client = PrometheusClient(cfg.prometheus)
    now = (history.end // 15) * 15
    runner = QueryRunner(cfg.queries[0], client, clock=lambda: now)
    runner.run()
    live = {labels["model"]: out[0] for labels, out in runner.published()}
    replayed = {r.labels["model"]: r.scores.score[0][-1] for r in bt.backtest_query(cfg.queries[0], client, now - 600, now)}
    assert set(live) == set(replayed) == {"m1", "m2", "m3", "m4"}
    for m in live:
        assert replayed[m] == pytest.approx(live[m], rel=1e-9)


def test_a_failing_query_is_reported_and_exits_1(tmp_path, history):
    cfg = write_config(tmp_path, history.prometheus.url, expr="rate(model_latency_seconds[1m]")
    out = cli("--config", str(cfg), "--start", "now-10m")
    assert out.returncode == 1 and "FAILED: bad_data" in out.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "--start is required"),
        (["--start", "now", "--end", "now-1h"], "must be before"),
        (["--start", "last tuesday"], "invalid time 'last tuesday'"),
        (["--start", "now-1h", "--query", "nope"], "--query nope: not in"),
    ],
)
def test_prometheus_mode_argument_errors(tmp_path, args, fragment):
    out = cli("--config", str(write_config(tmp_path, "http://127.0.0.1:1")), *args)
    assert out.returncode == 2 and fragment in out.stderr, out.stderr


def test_the_shipped_rule_and_the_backtest_use_the_same_threshold_and_for():
    cfg = yaml.safe_load((Path(__file__).parent.parent / "deploy" / "mixin" / "config.yaml").read_text())
    from sidecar.durations import parse_duration

    assert float(cfg["warning_score"]) == bt.ALERT_THRESHOLD
    assert parse_duration(cfg["anomalous_for"]) == bt.ALERT_FOR


# -- multivariate -------------------------------------------------------------------------
def correlated(n=1500, seed=0, break_at=1200):
    rng = np.random.default_rng(seed)
    cpu = rng.normal(0, 1, n)
    latency = cpu + rng.normal(0, 0.1, n)
    queue = rng.normal(5, 1, n)
    if break_at is not None:
        latency[break_at : break_at + 10] = -cpu[break_at : break_at + 10]  # each value in range, the pair is not
    return np.column_stack([cpu, latency, queue])


def test_several_value_columns_are_scored_as_one_vector_with_contributions(tmp_path):
    src = write_csv(tmp_path / "mv.csv", correlated(), columns=("cpu", "latency", "queue"))
    out = cli("--csv", str(src), "--output", str(tmp_path / "o.csv"), "--history", "500", "--refit-every", "50", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = read_out(tmp_path / "o.csv")
    assert list(rows[0]) == ["timestamp", "score", "cpu_contribution", "latency_contribution", "queue_contribution"]
    assert len(rows) == 1500
    score = np.array([float(r["score"]) if r["score"] else np.nan for r in rows])
    broken = [i for i in range(1200, 1210) if abs(correlated()[i, 0]) > 0.5]  # a visible break
    assert np.all(score[broken] > 1)
    assert np.nanmean(score[600:1200] > 1) < 0.01
    for i in broken:
        c = {k: float(rows[i][f"{k}_contribution"]) for k in ("cpu", "latency", "queue")}
        assert c["queue"] < min(c["cpu"], c["latency"])
    assert json.loads(out.stdout)["files"][0]["detector"] == "mahalanobis"


def test_a_multivariate_train_file_scores_every_test_row(tmp_path):
    train = write_csv(tmp_path / "train.csv", correlated(n=600, seed=1, break_at=None), columns=("cpu", "latency", "queue"))
    test = write_csv(tmp_path / "test.csv", correlated(n=300, seed=2, break_at=100), t0=T0 + 600 * STEP, columns=("cpu", "latency", "queue"))
    out = cli("--csv", str(test), "--train", str(train), "--detector", "pca", "--output", str(tmp_path / "o.csv"), "--format", "json")
    assert out.returncode == 0, out.stderr
    score = np.array([float(r["score"]) for r in read_out(tmp_path / "o.csv")])
    assert score.size == 300 and not np.isnan(score).any()
    assert np.mean(score[100:110] > 1) >= 0.7 and np.mean(score[:100] > 1) < 0.03
    bad = write_csv(tmp_path / "other.csv", correlated(n=50), columns=("a", "b", "c"))
    out = cli("--csv", str(test), "--train", str(bad))
    assert out.returncode == 2 and "differ" in out.stderr


def test_history_and_refit_take_durations_or_points(tmp_path):
    src = write_csv(tmp_path / "in.csv", noisy())
    runs = {}
    for name, args in {"dur": ["--history", "2d", "--refit-every", "1h"], "pts": ["--history", "576", "--refit-every", "12"]}.items():
        out = cli("--csv", str(src), "--output", str(tmp_path / f"{name}.csv"), "--format", "json", *args)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)["files"][0]
        assert (report["history_points"], report["refit_every_points"]) == (576, 12)
        runs[name] = (tmp_path / f"{name}.csv").read_text()
    assert runs["dur"] == runs["pts"]
    bad = cli("--csv", str(src), "--history", "a week")
    assert bad.returncode == 2 and "--history: invalid duration 'a week'" in bad.stderr


def test_files_scored_in_parallel_give_the_same_results(tmp_path):
    src = tmp_path / "data"
    for k in range(3):
        write_csv(src / f"f{k}.csv", noisy(seed=k, spike_at=900 + 50 * k))
    outs = []
    for jobs in ("1", "2"):
        out = cli("--csv", str(src), "--jobs", jobs, "--output", str(tmp_path / f"out{jobs}"), "--format", "json")
        assert out.returncode == 0, out.stderr
        files = json.loads(out.stdout)["files"]
        outs.append(([f["alerts"] for f in files], [(tmp_path / f"out{jobs}" / f"f{k}.csv").read_text() for k in range(3)]))
    assert outs[0] == outs[1] and all(outs[0][0])
    # A bad file found by a worker is still a clean error.
    (src / "f1.csv").write_text("timestamp,value\nnot-a-time,1\n")
    out = cli("--csv", str(src), "--jobs", "2")
    assert out.returncode == 2 and "f1.csv:2: unparsable timestamp" in out.stderr
