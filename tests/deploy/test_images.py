"""The Dockerfiles (read, as no Docker engine runs here) and the image's entrypoint roles (run, on this machine)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, REPO_ROOT, entrypoint_roles

ENTRYPOINT = DEPLOY / "entrypoint.sh"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def copied_sources(dockerfile: Path) -> list[str]:
    return [
        source
        for keyword, arguments in instructions(dockerfile)
        if keyword == "COPY" and "--from=" not in arguments
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.vllm"])
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    users = [arguments for keyword, arguments in final_stage(DEPLOY / name) if keyword == "USER"]

    assert users, f"{name} has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric, so Kubernetes can verify runAsNonRoot


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.vllm"])
def test_everything_copied_into_the_images_exists(name: str) -> None:
    sources = copied_sources(DEPLOY / name)

    assert sources
    assert [source for source in sources if not (REPO_ROOT / source).exists()] == []


def test_the_cpu_image_installs_the_cpu_torch_and_collects_static_files() -> None:
    steps = instructions(DEPLOY / "Dockerfile")
    installs = [arguments for keyword, arguments in steps if keyword == "RUN" and "pip install" in arguments]
    runtime = final_stage(DEPLOY / "Dockerfile")

    (install,) = installs
    assert "-r /tmp/requirements/requirements.txt" in install and "-c /tmp/requirements/constraints.txt" in install
    assert "torch==2.13.0" in (REPO_ROOT / "constraints.txt").read_text()
    assert "not torch.version.cuda" in install  # the build fails if a CUDA torch slipped in
    assert any(keyword == "RUN" and "manage.py collectstatic --noinput" in arguments for keyword, arguments in runtime)
    assert ("ENTRYPOINT", '["/app/deploy/entrypoint.sh"]') in runtime
    assert ("CMD", '["web"]') in runtime
    assert os.access(ENTRYPOINT, os.X_OK)
    environment = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in environment and "MEDKG_VAR_DIR=/var/lib/medkg" in environment


def test_the_vllm_image_is_a_pinned_official_image() -> None:
    steps = instructions(DEPLOY / "Dockerfile.vllm")
    (base_argument,) = [
        arguments for keyword, arguments in steps if keyword == "ARG" and arguments.startswith("VLLM_IMAGE=")
    ]

    assert re.fullmatch(r"VLLM_IMAGE=vllm/vllm-openai:v\d+\.\d+\.\d+", base_argument)
    assert ("ENTRYPOINT", '["python3", "/opt/medkg/serve.py"]') in steps


def test_the_docker_context_leaves_out_local_state_and_secrets() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().splitlines())

    assert {".git", ".venv", "var", "staticfiles", "deploy/secrets"} <= ignored


def test_the_image_collects_static_files(tmp_path: Path) -> None:
    """What `RUN manage.py collectstatic` does in the build, with the image's environment."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "STATIC_ROOT": str(tmp_path / "static"),
        "MEDKG_VAR_DIR": str(tmp_path / "var"),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=REPO_ROOT,
        env=environment,
        check=True,
        timeout=120,
    )

    assert (tmp_path / "static" / "admin" / "css" / "base.css").is_file()
    assert (tmp_path / "static" / "rest_framework").is_dir()


# --- deploy/entrypoint.sh, run as the image runs it -------------------------------------------------------


def run_entrypoint(*arguments: str, var_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # the image's venv is first on PATH
        "HOME": str(var_dir),
        "MEDKG_VAR_DIR": str(var_dir),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }
    return subprocess.run(
        [str(ENTRYPOINT), *arguments], env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_entrypoint_knows_the_roles_the_manifests_use() -> None:
    assert entrypoint_roles() == {"web", "worker", "migrate", "wait-for-migrations", "storage-migrate", "manage"}


def test_migrate_then_wait_for_migrations(tmp_path: Path) -> None:
    pending = run_entrypoint("wait-for-migrations", var_dir=tmp_path, MEDKG_MIGRATION_WAIT_SECONDS="0")
    migrated = run_entrypoint("migrate", var_dir=tmp_path)
    waited = run_entrypoint("wait-for-migrations", var_dir=tmp_path, MEDKG_MIGRATION_WAIT_SECONDS="0")

    assert pending.returncode != 0
    assert "migrations still pending; is the medkg-migrate Job running?" in pending.stderr
    assert migrated.returncode == 0, migrated.stderr
    seeded = sorted(path.stem for path in (REPO_ROOT / "config" / "embedding" / "namespaces").glob("*.yaml"))
    assert f"{len(seeded)} created, 0 updated, 0 unchanged" in migrated.stdout  # synced after migrating
    assert waited.returncode == 0, waited.stderr
    with sqlite3.connect(tmp_path / "medkg.sqlite3") as database:
        names = {row[0] for row in database.execute("SELECT name FROM namespaces_namespace")}
    assert names == set(seeded)


def test_manage_role_runs_a_management_command(tmp_path: Path) -> None:
    result = run_entrypoint("manage", "check", var_dir=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_worker_refuses_to_start_without_a_broker(tmp_path: Path) -> None:
    result = run_entrypoint("worker", var_dir=tmp_path)

    assert result.returncode == 2
    assert "CELERY_BROKER_URL (or CELERY_BROKER_URL_FILE) must be set" in result.stderr


def test_storage_migrate_needs_its_namespaces(tmp_path: Path) -> None:
    result = run_entrypoint("storage-migrate", var_dir=tmp_path)

    assert result.returncode == 2
    assert "MEDKG_STORAGE_NAMESPACES is empty" in result.stderr


def test_storage_migrate_bootstraps_each_namespace(tmp_path: Path) -> None:
    """The medkg-storage-migration Job's command on a migrated database (needs bootstrap_faiss)."""
    assert run_entrypoint("migrate", var_dir=tmp_path).returncode == 0

    result = run_entrypoint("storage-migrate", var_dir=tmp_path, MEDKG_STORAGE_NAMESPACES="single_vector.minilm.384.v1")

    assert result.returncode == 0, result.stdout + result.stderr
