"""tests/smoke/embed_smoke.py, the runbook's staging smoke test, run as an operator runs it: a separate
process against a live server (the one `make run` starts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.deploy.live import MakeRunServer
from tests.deploy.manifests import REPO_ROOT
from tests.servers import free_port

pytestmark = pytest.mark.slow

SMOKE = REPO_ROOT / "tests" / "smoke" / "embed_smoke.py"
CHECKS = ["health", "namespaces", "embed", "dimension", "openai", "ingest", "search", "delete"]


def smoke(*arguments: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, str(SMOKE), *arguments], capture_output=True, text=True, timeout=600, check=False
    )
    return result.returncode, result.stdout.splitlines() + result.stderr.splitlines()


def statuses(lines: list[str]) -> dict[str, str]:
    return {line.split()[1].rstrip(":"): line.split()[0] for line in lines if line.startswith("[")}


def test_every_check_passes_against_make_runs_server(make_run_server: MakeRunServer) -> None:
    code, lines = smoke(
        "--base-url", make_run_server.url, "--token", make_run_server.token, "--tenant", make_run_server.tenant
    )

    assert statuses(lines) == dict.fromkeys(CHECKS, "[PASS]"), "\n".join(lines)
    assert lines[-1] == "smoke test: every check passed"
    assert code == 0


def test_a_namespace_without_its_backend_fails_at_embed(make_run_server: MakeRunServer) -> None:
    """make run has no VLLM_URL: the qwen3 namespace is listed but cannot embed (503 gpu_unavailable: its GPU is the vLLM server)."""
    code, lines = smoke(
        "--base-url",
        make_run_server.url,
        "--token",
        make_run_server.token,
        "--tenant",
        make_run_server.tenant,
        "--namespace",
        "single_vector.qwen3.4096.v1",
    )

    assert code == 1
    assert statuses(lines) == {
        "health": "[PASS]",
        "namespaces": "[PASS]",
        "embed": "[FAIL]",
        **dict.fromkeys(CHECKS[3:], "[SKIP]"),
    }
    assert any("gpu_unavailable" in line for line in lines if line.startswith("[FAIL] embed"))
    assert lines[-1] == "smoke test FAILED at embed"


def test_a_bad_token_fails_at_namespaces(make_run_server: MakeRunServer) -> None:
    code, lines = smoke("--base-url", make_run_server.url, "--token", "not-a-token", "--tenant", "demo")

    assert code == 1
    assert statuses(lines)["health"] == "[PASS]" and statuses(lines)["namespaces"] == "[FAIL]"
    assert any("expected 200 with JSON, got 401" in line for line in lines)


def test_an_unknown_namespace_fails_at_namespaces(make_run_server: MakeRunServer) -> None:
    code, lines = smoke(
        "--base-url",
        make_run_server.url,
        "--token",
        make_run_server.token,
        "--tenant",
        "demo",
        "--namespace",
        "single_vector.absent.384.v1",
    )

    assert code == 1
    assert any(
        line.startswith("[FAIL] namespaces: single_vector.absent.384.v1 is not among the tenant's namespaces")
        for line in lines
    )


def test_no_server_fails_at_health() -> None:
    code, lines = smoke(
        "--base-url", f"http://127.0.0.1:{free_port()}", "--token", "t", "--tenant", "demo", "--timeout", "5"
    )

    assert code == 1
    assert statuses(lines) == {"health": "[FAIL]", **dict.fromkeys(CHECKS[1:], "[SKIP]")}
    assert any(line.startswith("[FAIL] health: GET /health: no answer from") for line in lines)


def test_missing_arguments_are_a_usage_error() -> None:
    code, lines = smoke("--base-url", "http://127.0.0.1:1")

    assert code == 2
    assert any("the following arguments are required: --token, --tenant" in line for line in lines)
