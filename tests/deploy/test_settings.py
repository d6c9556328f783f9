"""Production settings: `check --deploy` passes with the overlays' environment, and a wrong one stops at start."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.deploy.environments import deployed_environment, manage

SECURITY_SETTINGS = (
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
    "ALLOWED_HOSTS",
    "DEBUG",
)


def effective(environment: dict[str, str]) -> dict[str, object]:
    script = f"from django.conf import settings; import json; print(json.dumps({{n: getattr(settings, n) for n in {SECURITY_SETTINGS!r}}}))"
    result = manage(["shell", "--no-imports", "-c", script], environment, timeout=120)
    assert result.returncode == 0, result.stderr
    values: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


@pytest.mark.parametrize("overlay", ["production", "staging"])
def test_check_deploy_passes_with_the_overlays_environment(overlay: str, tmp_path: Path) -> None:
    result = manage(["check", "--deploy", "--fail-level", "WARNING"], deployed_environment(overlay, tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_deployed_defaults_are_https_behind_the_proxy(tmp_path: Path) -> None:
    values = effective(deployed_environment("production", tmp_path))

    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31_536_000
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True and values["SECURE_HSTS_PRELOAD"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["DEBUG"] is False
    assert "embeddings.example.org" in values["ALLOWED_HOSTS"]  # type: ignore[operator]
    assert "10.12.0.7" in values["ALLOWED_HOSTS"]  # type: ignore[operator]  # POD_IP, for probes and scrapes


def test_make_run_keeps_plain_http_on_loopback(tmp_path: Path) -> None:
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MEDKG_VAR_DIR": str(tmp_path / "var")}
    values = effective(environment)

    assert values["SECURE_SSL_REDIRECT"] is False and values["SECURE_HSTS_SECONDS"] == 0
    assert values["SESSION_COOKIE_SECURE"] is False and values["SECURE_PROXY_SSL_HEADER"] is None
    assert values["ALLOWED_HOSTS"] == ["127.0.0.1", "localhost", "[::1]", "testserver"]


def test_check_deploy_fails_without_the_production_environment(tmp_path: Path) -> None:
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MEDKG_VAR_DIR": str(tmp_path / "var")}

    result = manage(["check", "--deploy", "--fail-level", "WARNING"], environment)

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W009", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SECRET_KEY_FILE": None}, "SECRET_KEY (or SECRET_KEY_FILE) must be set"),
        ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS must be set when MEDKG_ENVIRONMENT=production"),
        ({"DEBUG": "1"}, "DEBUG must be off when MEDKG_ENVIRONMENT=production"),
        ({"MEDKG_ENVIRONMENT": "prod"}, "MEDKG_ENVIRONMENT must be development, staging or production"),
        ({"DATABASE_URL_FILE": "/nonexistent/database-url"}, "DATABASE_URL_FILE='/nonexistent/database-url' cannot"),
        ({"REDIS_URL_FILE": "/nonexistent/redis-url"}, "REDIS_URL_FILE='/nonexistent/redis-url' cannot be read"),
    ],
)
def test_a_wrong_production_environment_stops_at_start_naming_the_variable(
    change: dict[str, str | None], named: str, tmp_path: Path
) -> None:
    environment = deployed_environment("production", tmp_path)
    for name, value in change.items():
        if value is None:
            environment.pop(name)
        else:
            environment[name] = value

    result = manage(["check"], environment, timeout=120)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr


def development_key_of(var_dir: Path, tmp_path: Path) -> str:
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MEDKG_VAR_DIR": str(var_dir)}
    result = manage(
        ["shell", "--no-imports", "-c", "from django.conf import settings; print(settings.SECRET_KEY)"], environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_without_secret_key_the_embedded_default_makes_a_random_key_once_and_reuses_it(tmp_path: Path) -> None:
    first = development_key_of(tmp_path / "var", tmp_path)
    again = development_key_of(tmp_path / "var", tmp_path)
    elsewhere = development_key_of(tmp_path / "other", tmp_path)

    assert first == again  # make run and every manage.py command sign with the same key
    assert first != elsewhere and len(first) >= 60
    assert first.startswith("django-insecure-")  # so check --deploy still refuses it (security.W009)
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.read_text().strip() == first
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in (tmp_path / "var").iterdir() if path.name.startswith(".secret_key")] == []
