"""The Kubernetes manifests: valid against Kubernetes and Prometheus Operator schemas, secure, wired together.

Kubernetes objects are validated with kubernetes-validate (strict: unknown fields are errors)
against Kubernetes 1.28; ServiceMonitor / PodMonitor / PrometheusRule against the operator's
CRD openAPIV3Schema (from ../shared/schemas/prometheus-operator, skipped where absent). The
kustomizations are built with `kubectl kustomize` (or `kustomize build`) where one is installed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import sidecar
from deploy_assets import (
    DEPLOY,
    OPERATOR_SCHEMAS,
    kustomize_build,
    kustomize_command,
    load_all_yaml,
    load_yaml,
    mixin_config,
    sidecar_job,
)
from servers import REPO

K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.28"
OPERATOR_GROUP = "monitoring.coreos.com"
#: Every kustomization users apply (components are built through an example that includes them).
BUILDS = ["standalone", "rules", "examples/model-with-sidecar", "examples/kube-prometheus-stack"]
SIDECAR_CONFIG_FILES = [
    K8S / "standalone" / "config.yaml",
    K8S / "examples" / "model-with-sidecar" / "config.yaml",
    DEPLOY / "compose" / "sidecar.yaml",
]

needs_kustomize = pytest.mark.skipif(kustomize_command() is None, reason="neither kubectl nor kustomize is installed")


def resource_files() -> list[Path]:
    """Every file named in a `resources:` list of a kustomization (the plain manifests)."""
    files = []
    for kustomization in sorted(K8S.rglob("kustomization.yaml")):
        for entry in load_yaml(kustomization).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


def objects_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in load_all_yaml(path) if isinstance(d, dict) and "kind" in d]


@lru_cache(maxsize=None)
def built(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize_build(K8S / name))


def one(objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# -- schema validation --------------------------------------------------------------------
def validate_kubernetes(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: {exc.message} at {list(exc.path)}") from None


def _strict(schema: Any) -> Any:
    """Reject fields a schema does not declare, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def operator_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for path in sorted(OPERATOR_SCHEMAS.glob("*.yaml")):
        crd = load_yaml(path)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return validators


def validate_operator(obj: dict[str, Any]) -> None:
    validators = operator_validators()
    assert obj["kind"] in validators, f"no CRD schema for {obj['kind']}"
    errors = sorted(validators[obj["kind"]].iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


needs_operator_schemas = pytest.mark.skipif(
    not OPERATOR_SCHEMAS.is_dir(), reason=f"Prometheus Operator CRD schemas not present at {OPERATOR_SCHEMAS}"
)


def test_the_manifests_are_found():
    kinds = {o["kind"] for f in resource_files() for o in objects_of(f)}
    assert kinds >= {"Deployment", "Service", "ServiceAccount", "ServiceMonitor", "PodMonitor", "PrometheusRule"}, kinds


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_plain_manifest_is_valid_for_kubernetes_1_28(path):
    for obj in objects_of(path):
        if obj["apiVersion"].split("/")[0] != OPERATOR_GROUP:
            validate_kubernetes(obj)


@needs_operator_schemas
@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_plain_operator_manifest_is_valid_against_the_operator_crds(path):
    for obj in objects_of(path):
        if obj["apiVersion"].split("/")[0] == OPERATOR_GROUP:
            validate_operator(obj)


@needs_kustomize
@pytest.mark.parametrize("name", BUILDS)
def test_every_kustomization_builds_into_objects_valid_for_kubernetes_1_28(name):
    objects = built(name)
    assert objects
    for obj in objects:
        if obj["apiVersion"].split("/")[0] != OPERATOR_GROUP:
            validate_kubernetes(obj)


@needs_kustomize
@needs_operator_schemas
@pytest.mark.parametrize("name", BUILDS)
def test_every_kustomization_builds_into_operator_objects_valid_against_the_crds(name):
    for obj in built(name):
        if obj["apiVersion"].split("/")[0] == OPERATOR_GROUP:
            validate_operator(obj)


@needs_operator_schemas
def test_the_crd_check_catches_a_misspelled_field():
    monitor = one(objects_of(K8S / "standalone" / "servicemonitor.yaml"), "ServiceMonitor")
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["honourLabels"] = broken["spec"]["endpoints"][0].pop("honorLabels")
    with pytest.raises(AssertionError, match="honourLabels"):
        validate_operator(broken)


def test_the_kubernetes_check_catches_a_misspelled_field():
    deployment = one(objects_of(K8S / "standalone" / "deployment.yaml"), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readonlyRootFilesystem"] = True
    with pytest.raises(AssertionError):
        validate_kubernetes(broken)


# -- the sidecar container ----------------------------------------------------------------
def sidecar_containers() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(container, pod spec) of the standalone Deployment and of the component's patch."""
    standalone = one(objects_of(K8S / "standalone" / "deployment.yaml"), "Deployment")["spec"]["template"]["spec"]
    patch = load_yaml(K8S / "sidecar" / "add-sidecar.yaml")["spec"]["template"]["spec"]
    out = {}
    for name, pod in (("standalone", standalone), ("component", patch)):
        (container,) = [c for c in pod["containers"] if c["name"] == "anomaly-sidecar"]
        out[name] = (container, pod)
    return out


@pytest.mark.parametrize("where", ["standalone", "component"])
def test_the_sidecar_runs_as_non_root_on_a_read_only_root_filesystem_without_privileges(where):
    container, pod = sidecar_containers()[where]
    sc = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"} in container["env"]


@pytest.mark.parametrize("where", ["standalone", "component"])
def test_the_sidecar_has_resource_requests_and_limits_and_probes_on_healthy_and_ready(where):
    container, _ = sidecar_containers()[where]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["ports"] == [{"name": "http-metrics", "containerPort": 9710, "protocol": "TCP"}]


@pytest.mark.parametrize("where", ["standalone", "component"])
def test_the_sidecar_reads_its_config_from_the_mounted_configmap(where):
    container, pod = sidecar_containers()[where]
    assert container["args"][:2] == ["run", "--config=/etc/anomaly-sidecar/config.yaml"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/anomaly-sidecar"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "anomaly-sidecar-config"


def test_every_sidecar_image_is_tagged_with_the_package_version():
    images = [c["image"] for c, _ in sidecar_containers().values()]
    images += [c["image"] for c in one(objects_of(K8S / "examples" / "model-with-sidecar" / "model.yaml"), "Deployment")["spec"]["template"]["spec"]["containers"]]
    assert images and all(i.endswith(f":{sidecar.__version__}") for i in images), images


@pytest.mark.parametrize("path", SIDECAR_CONFIG_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_shipped_sidecar_config_passes_check_config(path):
    out = subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--offline", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


# -- wiring: Service, monitors, labels ----------------------------------------------------
def test_the_service_selects_the_standalone_pods_on_the_named_port():
    deployment = one(objects_of(K8S / "standalone" / "deployment.yaml"), "Deployment")
    service = one(objects_of(K8S / "standalone" / "service.yaml"), "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    monitor = one(objects_of(K8S / "standalone" / "servicemonitor.yaml"), "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def monitor_endpoints() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    service_monitor = one(objects_of(K8S / "standalone" / "servicemonitor.yaml"), "ServiceMonitor")
    pod_monitor = one(objects_of(K8S / "sidecar" / "podmonitor.yaml"), "PodMonitor")
    return {
        "ServiceMonitor": (service_monitor, service_monitor["spec"]["endpoints"][0]),
        "PodMonitor": (pod_monitor, pod_monitor["spec"]["podMetricsEndpoints"][0]),
    }


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitors_honor_labels_and_set_the_job_and_sidecar_labels_the_alerts_use(kind):
    monitor, endpoint = monitor_endpoints()[kind]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == "http-metrics"
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"] if "targetLabel" in r}
    assert relabel["job"]["replacement"] == sidecar_job()
    assert relabel[mixin_config()["sidecar_label"]]["sourceLabels"] == ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_name"]
    # kube-prometheus-stack selects monitors by the release label (docs/deploying.md).
    assert mixin_config()["operator_labels"].items() <= monitor["metadata"]["labels"].items()


def test_the_pod_monitor_selects_the_label_that_the_component_puts_on_pods():
    pod_monitor, _ = monitor_endpoints()["PodMonitor"]
    patch_labels = load_yaml(K8S / "sidecar" / "add-sidecar.yaml")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= patch_labels.items()


@needs_kustomize
def test_the_component_adds_the_sidecar_only_to_labelled_deployments_with_the_generated_config(tmp_path):
    (tmp_path / "config.yaml").write_text((K8S / "examples" / "model-with-sidecar" / "config.yaml").read_text())
    deployments = []
    for name, labels in (("with-sidecar", {"anomaly-sidecar/inject": "true"}), ("without", {})):
        deployments.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "model", "image": "model:1"}]}}},
        })
    (tmp_path / "models.yaml").write_text(yaml.safe_dump_all(deployments))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["models.yaml"], "components": [os.path.relpath(K8S / "sidecar", tmp_path)],
        "configMapGenerator": [{"name": "anomaly-sidecar-config", "files": ["config.yaml"]}],
    }))
    objects = kustomize_build(tmp_path)
    config_map = one(objects, "ConfigMap")
    assert config_map["metadata"]["name"].startswith("anomaly-sidecar-config-")  # content hash: config changes roll the pods
    with_sidecar = one(objects, "Deployment", "with-sidecar")["spec"]["template"]
    assert sorted(c["name"] for c in with_sidecar["spec"]["containers"]) == ["anomaly-sidecar", "model"]
    assert with_sidecar["metadata"]["labels"]["anomaly-sidecar/scrape"] == "true"
    (volume,) = [v for v in with_sidecar["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    without = one(objects, "Deployment", "without")["spec"]["template"]
    assert [c["name"] for c in without["spec"]["containers"]] == ["model"] and "volumes" not in without["spec"]
    one(objects, "PodMonitor")
    for obj in objects:
        if obj["apiVersion"].split("/")[0] != OPERATOR_GROUP:
            validate_kubernetes(obj)


@needs_kustomize
def test_the_standalone_build_mounts_its_generated_config_and_includes_the_rules():
    objects = built("standalone")
    config_map = one(objects, "ConfigMap")
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    assert one(objects, "PrometheusRule")["spec"]["groups"] == load_yaml(DEPLOY / "prometheus" / "anomaly-sidecar.rules.yml")["groups"]
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == load_yaml(K8S / "standalone" / "config.yaml")


@needs_kustomize
def test_the_kube_prometheus_stack_overlay_sets_the_release_label_on_every_operator_object():
    objects = built("examples/kube-prometheus-stack")
    operator_objects = [o for o in objects if o["apiVersion"].startswith(OPERATOR_GROUP)]
    assert {o["kind"] for o in operator_objects} == {"ServiceMonitor", "PrometheusRule"}
    assert all(o["metadata"]["labels"]["release"] == "my-monitoring" for o in operator_objects)
    assert all(o["metadata"]["namespace"] == "monitoring" for o in objects)


@needs_kustomize
def test_the_overlay_in_the_deploying_guide_builds_with_its_release_label_and_queries(tmp_path):
    """docs/deploying.md's overlay, as a user would copy it, next to this repository."""
    guide = (REPO / "docs" / "deploying.md").read_text()
    (block,) = [b for b in guide.split("```yaml\n")[1:] if b.startswith("# my-overlay/kustomization.yaml")]
    overlay = yaml.safe_load(block.split("```")[0])
    overlay["resources"] = [os.path.relpath(K8S / "standalone", tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    (tmp_path / "config.yaml").write_text((DEPLOY / "compose" / "sidecar.yaml").read_text())
    objects = kustomize_build(tmp_path)
    assert all(o["metadata"]["namespace"] == "monitoring" for o in objects)
    assert {o["metadata"]["labels"]["release"] for o in objects if o["apiVersion"].startswith(OPERATOR_GROUP)} == {"my-release"}
    config_map = one(objects, "ConfigMap")
    assert "prediction_score_median" in config_map["data"]["config.yaml"]
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
