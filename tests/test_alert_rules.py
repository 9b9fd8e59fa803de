"""The shipped alerting rules: one source, valid for Prometheus, unit-tested with promtool, documented."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from deploy_assets import (
    MIXIN,
    PROMETHEUS_CONFIG,
    PROMETHEUS_RULE_FILE,
    REQUIRED_ALERTS,
    RULE_TESTS,
    RULES_FILE,
    RUNBOOKS,
    alert_rules,
    generator,
    load_all_yaml,
    load_yaml,
    mixin_config,
)
from servers import REPO, require_binary


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_rule_file_and_the_prometheusrule_are_what_the_mixin_source_generates():
    gen = generator()
    expected = gen.outputs()
    for path in (RULES_FILE, PROMETHEUS_RULE_FILE):
        assert path.read_text() == expected[path], f"{path.relative_to(REPO)} is stale: run python3 deploy/mixin/generate.py"


def test_the_prometheusrule_holds_exactly_the_groups_of_the_plain_rule_file():
    (resource,) = load_all_yaml(PROMETHEUS_RULE_FILE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1" and resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == load_yaml(RULES_FILE)["groups"]
    # kube-prometheus-stack only loads rules carrying its release label.
    assert mixin_config()["operator_labels"].items() <= resource["metadata"]["labels"].items()


def test_promtool_check_rules_accepts_the_rule_file_and_the_prometheusrule_spec(tmp_path):
    out = promtool("check", "rules", str(RULES_FILE))
    assert out.returncode == 0, out.stdout + out.stderr
    (resource,) = load_all_yaml(PROMETHEUS_RULE_FILE)
    spec = tmp_path / "prometheusrule-spec.yml"
    spec.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}))
    out = promtool("check", "rules", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_promtool_check_config_accepts_the_example_prometheus_config_with_its_rule_file():
    out = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = load_yaml(PROMETHEUS_CONFIG)
    assert (PROMETHEUS_CONFIG.parent / cfg["rule_files"][0]).resolve() == RULES_FILE.resolve()


def test_promtool_unit_tests_of_the_rules_pass():
    assert RULE_TESTS, "no rule unit tests under deploy/prometheus/tests/"
    out = promtool("test", "rules", *(str(p) for p in RULE_TESTS), cwd=RULE_TESTS[0].parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_showing_its_for_delay_and_rendered_annotations():
    """Per alert: one evaluation where it must not fire yet, one later where it fires with annotations."""
    quiet: dict[str, list[str]] = {}
    firing: dict[str, list[str]] = {}
    for path in RULE_TESTS:
        for group in load_yaml(path)["tests"]:
            assert group.get("name"), f"{path.name}: every test group is named like a sentence"
            for case in group.get("alert_rule_test", []):
                if case["exp_alerts"]:
                    assert all(a.get("exp_annotations") for a in case["exp_alerts"]), (group["name"], case)
                    firing.setdefault(case["alertname"], []).append(case["eval_time"])
                else:
                    quiet.setdefault(case["alertname"], []).append(case["eval_time"])
    for alert, rule in alert_rules().items():
        assert alert in firing, f"{alert}: no unit test shows it firing"
        if "for" in rule:
            assert alert in quiet, f"{alert}: no unit test shows it still quiet within its for: {rule['for']}"


def test_every_required_alert_exists_with_its_severity():
    rules = alert_rules()
    assert {name: rules[name]["labels"]["severity"] for name in REQUIRED_ALERTS if name in rules} == REQUIRED_ALERTS
    assert all(r["labels"]["severity"] in {"critical", "warning", "info"} for r in rules.values())


#: Alerts whose value says nothing (always the same), so their description does not show it.
CONSTANT_VALUE = {"AnomalySidecarDown": "up == 0 is always 0", "AnomalySidecarAbsent": "absent() is always 1"}


def test_every_alert_has_a_summary_and_a_description_templated_with_its_labels_and_value():
    for name, rule in alert_rules().items():
        ann = rule["annotations"]
        assert set(ann) >= {"summary", "description", "runbook_url"}, name
        assert "{{" not in ann["summary"], f"{name}: the summary is static; details go in the description"
        assert "$labels." in ann["description"], name
        if name not in CONSTANT_VALUE:
            assert "$value" in ann["description"], name
        for text in ann.values():
            assert "<<" not in text and ">>" not in text, f"{name}: unsubstituted placeholder in {text!r}"


def test_every_alert_links_a_runbook_in_the_repo_with_meaning_impact_diagnosis_and_mitigation():
    for name, rule in alert_rules().items():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"/docs/runbooks/{name}.md"), url
        page = RUNBOOKS / f"{name}.md"
        assert page.exists(), f"missing runbook {page.relative_to(REPO)}"
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), page
        headings = re.findall(r"^## (.+)$", text, re.M)
        assert headings == ["Meaning", "Impact", "Diagnosis", "Mitigation"], (name, headings)
    assert {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"} == set(alert_rules()), "a runbook without an alert"


def test_sidecar_health_alerts_select_the_sidecar_job_and_anomaly_alerts_do_not():
    """The anomaly_* gauges keep the scored series' job under honor_labels; only self-metrics carry the sidecar job."""
    selector = mixin_config()["sidecar_selector"]
    for name, rule in alert_rules().items():
        if name.startswith("AnomalySidecar"):
            for metric in re.findall(r"\b(up|anomaly_sidecar_\w+)\{([^}]*)\}", rule["expr"]):
                assert selector in metric[1], (name, metric)
        else:
            assert "anomaly_score" in rule["expr"] and selector not in rule["expr"], name
    assert alert_rules()["AnomalySidecarAbsent"]["expr"] == f"absent(up{{{selector}}})"


def test_selectors_and_thresholds_live_only_in_the_mixin_config():
    source = (MIXIN / "alerts.yaml").read_text() + (MIXIN / "dashboards.py").read_text()
    config = mixin_config()
    assert config["sidecar_selector"] not in source
    assert 'job="' not in (MIXIN / "alerts.yaml").read_text()
    for key in ("anomalous_for", "critical_for", "sustained_window", "down_for", "not_ready_for"):
        assert f"<<{key}>>" in (MIXIN / "alerts.yaml").read_text(), key


def test_a_changed_threshold_in_the_config_reaches_both_rule_outputs():
    gen = generator()
    config = {**gen.load_config(), "critical_score": 5, "sidecar_selector": 'job="my-sidecar"'}
    groups = gen.rule_groups(config)
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert rules["ModelMetricAnomalyCritical"]["expr"].startswith("anomaly_score > 5\n")
    assert rules["AnomalySidecarDown"]["expr"] == 'up{job="my-sidecar"} == 0'
    assert gen.render_prometheus_rule(groups, config).count('job=\\"my-sidecar\\"') + gen.render_prometheus_rule(groups, config).count('job="my-sidecar"') >= 6


def test_an_unknown_placeholder_is_an_error_not_a_blank():
    with pytest.raises(KeyError, match="no_such_threshold"):
        generator().substitute("anomaly_score > <<no_such_threshold>>", mixin_config())
