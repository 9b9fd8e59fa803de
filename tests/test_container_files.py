"""The Dockerfile and the docker-compose stack, checked structurally (no Docker engine runs here).

The checks follow what a build and `docker compose up` would trip over: files the build copies
or the compose file mounts that do not exist, images without a pinned tag, a root user,
services pointing at hosts or ports that no service has, Grafana looking for dashboards where
none are mounted.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit


from deploy_assets import ALERTMANAGER_CONFIG, DEPLOY, PROMETHEUS_CONFIG, load_yaml
from servers import REPO

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
DEMO_COMMAND = ["python", "examples/demo/model_server.py", "--host", "0.0.0.0", "--port", "8000"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if ins == "FROM":
            result.append([])
        if result:
            result[-1].append((ins, args))
    return result


def build_args() -> dict[str, str]:
    args = {}
    for ins, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if ins == "FROM":
            break
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    return args


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def ignored(path: str) -> bool:
    """Whether Dockerfile.dockerignore keeps ``path`` (relative to the repo) out of the context."""
    result = False
    for pattern in DOCKERIGNORE.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


def test_the_dockerfile_builds_in_two_stages_from_a_pinned_python_image():
    images = [args.split()[0] for stage in stages() for ins, args in stage if ins == "FROM"]
    assert len(images) == 2
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m[1]], i) for i in images]
    for image in resolved:
        name, _, tag = image.partition(":")
        assert name == "python" and tag and tag != "latest" and "slim" in tag, image


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    copies = [args for stage in stages() for ins, args in stage if ins == "COPY" and "--from" not in args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
            assert not ignored(src), f"COPY {src}: excluded by {DOCKERIGNORE.name}"
    assert (REPO / "examples" / "demo" / "model_server.py").exists() and not ignored("examples/demo/model_server.py")
    assert ignored("tests/servers.py") and ignored(".git") and ignored("sidecar/__pycache__/x.pyc")


def test_the_image_runs_the_sidecar_as_non_root_with_its_port_health_check_and_config_path():
    final = dict((ins, args) for ins, args in stages()[-1])  # last of each instruction in the final stage
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), final["USER"]
    assert final["EXPOSE"].split() == ["9710"]
    env = " ".join(args for ins, args in stages()[-1] if ins == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "/-/healthy" in final["HEALTHCHECK"] and "9710" in final["HEALTHCHECK"]
    assert exec_form(final["ENTRYPOINT"]) == ["anomaly-sidecar"]
    assert exec_form(final["CMD"]) == ["run", "--config", "/etc/anomaly-sidecar/config.yaml"]
    # The entry point is the console script the package installs.
    assert 'anomaly-sidecar = "sidecar.cli:main"' in (REPO / "pyproject.toml").read_text()


# -- docker-compose --------------------------------------------------------------------------
COMPOSE_CFG = load_yaml(COMPOSE)
SERVICES = COMPOSE_CFG["services"]


def ports_of(service: str) -> set[int]:
    """Ports a service listens on inside the compose network (published container ports)."""
    return {int(p.split(":")[-1]) for p in SERVICES[service].get("ports", [])}


def test_compose_has_the_model_sidecar_prometheus_alertmanager_and_grafana():
    assert set(SERVICES) >= {"model", "sidecar", "prometheus", "alertmanager", "grafana"}


def test_compose_images_are_pinned_and_the_local_image_is_built_from_the_dockerfile():
    for name, svc in SERVICES.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert SERVICES["model"]["image"] == SERVICES["sidecar"]["image"]


def test_compose_runs_the_demo_model_server_from_the_sidecar_image_with_the_agreed_command():
    model = SERVICES["model"]
    assert model["entrypoint"] + model.get("command", []) == DEMO_COMMAND
    assert 8000 in ports_of("model")


def test_compose_runs_the_sidecar_non_root_read_only_with_its_config_mounted():
    sc = SERVICES["sidecar"]
    assert sc["read_only"] is True and "/tmp" in sc["tmpfs"]
    assert sc["user"].split(":")[0] != "0"
    assert sc["command"][:3] == ["run", "--config", "/etc/anomaly-sidecar/config.yaml"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in sc["volumes"]}
    config = (COMPOSE.parent / mounts["/etc/anomaly-sidecar/config.yaml"]).resolve()
    assert config == DEPLOY / "compose" / "sidecar.yaml"
    prometheus = urlsplit(load_yaml(config)["prometheus"]["url"])
    assert prometheus.hostname == "prometheus" and prometheus.port in ports_of("prometheus")


def test_every_bind_mount_source_exists():
    for name, svc in SERVICES.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_prometheus_in_compose_scrapes_the_sidecar_and_model_services_and_alerts_to_alertmanager():
    prom = SERVICES["prometheus"]
    mounts = {m.split(":")[1]: (COMPOSE.parent / m.split(":")[0]).resolve() for m in prom["volumes"] if m.startswith(".")}
    assert mounts["/etc/prometheus"] == PROMETHEUS_CONFIG.parent
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    cfg = load_yaml(PROMETHEUS_CONFIG)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in cfg["scrape_configs"]}
    assert targets["anomaly-sidecar"] == [f"sidecar:{9710}"] and 9710 in ports_of("sidecar")
    assert targets["model-server"] == ["model:8000"]
    (sidecar_job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "anomaly-sidecar"]
    assert sidecar_job["honor_labels"] is True
    (am,) = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = am.split(":")
    assert host == "alertmanager" and int(port) in ports_of("alertmanager")


def test_alertmanager_in_compose_uses_the_example_config_and_its_webhooks_reach_the_receiver_service():
    am = SERVICES["alertmanager"]
    mounts = {m.split(":")[1]: (COMPOSE.parent / m.split(":")[0]).resolve() for m in am["volumes"]}
    assert mounts["/etc/alertmanager"] == ALERTMANAGER_CONFIG.parent
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am["command"]
    receiver = SERVICES["alert-receiver"]
    port = int(receiver["entrypoint"][receiver["entrypoint"].index("--port") + 1])
    for r in load_yaml(ALERTMANAGER_CONFIG)["receivers"]:
        for hook in r.get("webhook_configs", []):
            url = urlsplit(hook["url"])
            assert (url.hostname, url.port) == ("alert-receiver", port), hook["url"]
    script = receiver["volumes"][0].split(":")
    assert (COMPOSE.parent / script[0]).exists() and script[1] == receiver["entrypoint"][1]


def test_grafana_in_compose_is_provisioned_with_the_dashboards_and_the_prometheus_service():
    grafana = SERVICES["grafana"]
    mounts = {m.split(":")[1]: (COMPOSE.parent / m.split(":")[0]).resolve() for m in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == REPO / "grafana" / "provisioning"
    (provider,) = load_yaml(REPO / "grafana" / "provisioning" / "dashboards" / "anomaly-sidecar.yml")["providers"]
    assert mounts[provider["options"]["path"]] == REPO / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and (REPO / "grafana" / "dashboards" / Path(home).name).exists()
    (ds,) = load_yaml(REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(ds["url"])
    assert url.hostname == "prometheus" and url.port in ports_of("prometheus")
