"""The environment a deployed medkg container gets, rebuilt on this machine from the rendered overlay."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from tests.deploy.manifests import REPO_ROOT, medkg_environment, render

SECRET_MOUNT = "/run/secrets/medkg"
CONFIG_MOUNT = "/etc/medkg/config"


def write_secrets(directory: Path) -> Path:
    """The keys of the medkg-secrets Secret as files, as Kubernetes mounts them."""
    directory.mkdir(parents=True, exist_ok=True)
    values = {
        "secret-key": secrets.token_urlsafe(64),
        "database-url": "postgres://medkg:not-used@127.0.0.1:5432/medkg",
        "redis-url": "redis://127.0.0.1:6379/0",
        "celery-broker-url": "redis://127.0.0.1:6379/1",
    }
    for key, value in values.items():
        (directory / key).write_text(value)
    return directory


def deployed_environment(overlay: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """medkg-env of `overlay` with its secret files and config/ mapped to this checkout; nothing else inherited."""
    secret_dir = write_secrets(tmp_path / "secrets")
    environment = {
        name: value.replace(SECRET_MOUNT, str(secret_dir)).replace(CONFIG_MOUNT, str(REPO_ROOT / "config"))
        for name, value in medkg_environment(render(overlay)).items()
    }
    environment.update(
        {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "MEDKG_VAR_DIR": str(tmp_path / "var"),
            "POD_IP": "10.12.0.7",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    environment.update(extra)
    return environment


def manage(arguments: list[str], environment: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`manage.py ARGUMENTS` in exactly `environment`, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
