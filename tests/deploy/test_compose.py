"""deploy/compose.yaml, validated by Debian's `docker-compose config` (no Docker engine needed), and what it mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, REPO_ROOT, compose_config, entrypoint_roles, tool

SERVICES = {"postgres", "redis", "opensearch", "migrate", "web", "worker", "prometheus", "grafana", "vllm-qwen3"}
MEDKG_SERVICES = {"migrate": "migrate", "web": "web", "worker": "worker"}
MONITORING = DEPLOY / "monitoring"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """target in the container -> source on the host, for the service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("/", ".")):
            mounts[target] = Path(source)
    return mounts


def test_compose_validates_with_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    assert set(compose_config("--profile", "gpu")["services"]) == SERVICES


def test_medkg_services_share_the_cpu_image_in_their_roles(config: dict[str, Any]) -> None:
    services = config["services"]

    for name, role in MEDKG_SERVICES.items():
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(service["build"]["context"]).resolve() == REPO_ROOT
        assert service["image"] == services["web"]["image"]
        assert service["command"] == [role] and role in entrypoint_roles()
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_only_vllm_is_behind_the_gpu_profile_with_a_gpu(config: dict[str, Any]) -> None:
    services = config["services"]
    vllm = services["vllm-qwen3"]

    assert [name for name, service in services.items() if service.get("profiles")] == ["vllm-qwen3"]
    assert vllm["profiles"] == ["gpu"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert vllm["build"]["dockerfile"] == "deploy/Dockerfile.vllm"
    cache_home = next(
        line.split("=", 1)[1].split()[0]
        for line in (DEPLOY / "Dockerfile.vllm").read_text().splitlines()
        if "HF_HOME=" in line
    )
    (cache_volume,) = [volume for volume in vllm["volumes"] if volume.startswith("vllm-cache:")]
    assert cache_home.startswith(cache_volume.split(":")[1])  # the weights land on the volume


def test_ports_are_published_on_loopback_only(config: dict[str, Any]) -> None:
    published = [port for service in config["services"].values() for port in service.get("ports", [])]

    assert published and all(str(port).startswith("127.0.0.1:") for port in published)


def test_every_bind_mount_source_exists(config: dict[str, Any]) -> None:
    missing = [
        f"{name}: {source}"
        for name, service in config["services"].items()
        for source in bind_mounts(service).values()
        if not (DEPLOY / source).resolve().exists()
    ]

    assert missing == []


def test_prometheus_scrapes_web_and_loads_the_rules(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    settings = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config_target = next(target for target, source in mounts.items() if source.name == "prometheus.yml")

    assert f"--config.file={config_target}" in prometheus["command"]
    for rule_file in settings["rule_files"]:
        in_container = Path(config_target).parent / rule_file  # Prometheus resolves it next to its config
        assert mounts[str(in_container)].name == "embeddings.rules.yaml"
    targets = {
        target for job in settings["scrape_configs"] for group in job["static_configs"] for target in group["targets"]
    }
    assert {"web:8000", "vllm-qwen3:8000"} <= targets
    assert "MEDKG_BIND=0.0.0.0:8000" in (DEPLOY / "Dockerfile").read_text()


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        [tool("promtool", "Debian prometheus"), "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards(config: dict[str, Any]) -> None:
    grafana = bind_mounts(config["services"]["grafana"])
    provisioning = MONITORING / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "embeddings.yaml").read_text())["providers"]

    assert grafana["/etc/grafana/provisioning"].resolve() == provisioning.resolve()
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in config["services"]
    assert provider["folder"] == "Embeddings & Representation"
    dashboards_dir = grafana[provider["options"]["path"]].resolve()
    assert dashboards_dir == (MONITORING / "grafana" / "dashboards").resolve()


def _datasource_references(node: Any) -> set[str]:
    """The uid (or, in older dashboards, the name) of every datasource that a panel or a target names."""
    found: set[str] = set()
    if isinstance(node, dict):
        reference = node.get("datasource")
        if isinstance(reference, dict) and isinstance(reference.get("uid"), str):
            found.add(reference["uid"])
        elif isinstance(reference, str):
            found.add(reference)
        for value in node.values():
            found |= _datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _datasource_references(item)
    return found


def test_the_dashboards_use_the_provisioned_datasource() -> None:
    provisioning = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    sources = yaml.safe_load(provisioning.read_text())["datasources"]
    known = {source["uid"] for source in sources} | {source["name"] for source in sources}
    dashboards = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))

    assert "embeddings.json" in [path.name for path in dashboards]
    for path in dashboards:
        # $variables and Grafana's built-in "-- Grafana --" / "-- Mixed --" sources need no provisioning.
        used = {ref for ref in _datasource_references(json.loads(path.read_text())) if not ref.startswith(("$", "-- "))}
        assert used <= known, f"{path.name} uses datasources that are not provisioned: {sorted(used - known)}"


def test_make_secrets_writes_what_compose_mounts(config: dict[str, Any], tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(directory)], check=True, capture_output=True, timeout=30)
    first = {path.name: path.read_text() for path in directory.iterdir()}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(directory)], check=True, capture_output=True, timeout=30)

    assert {path.name: path.read_text() for path in directory.iterdir()} == first  # existing secrets are kept
    assert set(first) == {Path(secret["file"]).name for secret in config["secrets"].values()}
    assert all(
        Path(secret["file"]).parent.resolve() == (DEPLOY / "secrets").resolve() for secret in config["secrets"].values()
    )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((directory / name).stat().st_mode) == 0o644 for name in first)
    assert len(first["secret_key"]) >= 50
    postgres = config["services"]["postgres"]["environment"]
    expected_url = (
        f"postgres://{postgres['POSTGRES_USER']}:{first['postgres_password']}@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert first["database_url"] == expected_url
    assert "deploy/secrets/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/secrets" in (REPO_ROOT / ".dockerignore").read_text().splitlines()


def test_the_web_environment_is_accepted_by_the_settings(config: dict[str, Any], tmp_path: Path) -> None:
    """The settings start with Compose's environment of `web`, its secrets read from their files."""
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(secrets)], check=True, capture_output=True, timeout=30)
    web = config["services"]["web"]
    environment = {name: str(value) for name, value in web["environment"].items()}
    for name, value in list(environment.items()):
        if name.endswith("_FILE"):
            assert value.startswith("/run/secrets/") and Path(value).name in [s["source"] for s in web["secrets"]]
            environment[name] = str(secrets / Path(value).name)
    environment.update(PATH=os.environ["PATH"], MEDKG_VAR_DIR=str(tmp_path / "var"), HF_HUB_OFFLINE="1")
    script = "from django.conf import settings; print(settings.DATABASES['default']['HOST'], settings.SECRET_KEY[:4])"

    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=REPO_ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "medkg.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["postgres", (secrets / "secret_key").read_text()[:4]]
