"""manage.py predeploy_check: a PASS/FAIL line per check, exit status 1 on any failure.

vLLM cannot run here (no GPU): where a check needs vLLM's `/health`, a small HTTP server answers it instead.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command

from operations import predeploy
from tests.deploy.environments import deployed_environment, manage
from tests.deploy.manifests import REPO_ROOT

OWN_CHECKS = ("imports", "migrations", "configuration", "deploy-settings")


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/health" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def vllm_health() -> Iterator[str]:
    """A stand-in for vLLM's GET /health on a free loopback port; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_checklist(environment: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    result = manage(["predeploy_check", "--json"], environment)
    report = json.loads(result.stdout)
    return result.returncode, {check["check"]: check for check in report["checks"]}


def test_in_production_the_checks_of_this_code_pass(tmp_path: Path) -> None:
    with vllm_health() as vllm_url:
        _, checks = run_checklist(deployed_environment("production", tmp_path, VLLM_URL=vllm_url))

    assert list(checks) == list(predeploy.CHECKS)
    for name in OWN_CHECKS:
        assert checks[name]["status"] == "PASS", checks[name]
    assert "MEDKG_ENVIRONMENT=production" in checks["deploy-settings"]["detail"]


def test_the_whole_checklist_passes_in_production(tmp_path: Path) -> None:
    """Needs the operations pieces (verify_environment, rules, triggers, dashboard) and promtool on PATH."""
    with vllm_health() as vllm_url:
        environment = deployed_environment("production", tmp_path, VLLM_URL=vllm_url)
        code, checks = run_checklist(environment)
        text = manage(["predeploy_check"], environment)

    assert {name: check["status"] for name, check in checks.items()} == dict.fromkeys(predeploy.CHECKS, "PASS")
    assert code == 0
    assert text.returncode == 0 and "predeploy_check: ready to deploy (7 checks)" in text.stdout
    assert sum(line.lstrip().startswith("[PASS]") for line in text.stdout.splitlines()) == 7


def test_a_failure_exits_1_and_names_the_failed_checks(tmp_path: Path) -> None:
    environment = deployed_environment("production", tmp_path)
    environment.pop("ALLOWED_HOSTS")
    environment["MEDKG_ENVIRONMENT"] = "development"  # so the settings load, but check --deploy finds issues
    environment.pop("SECRET_KEY_FILE")

    result = manage(
        ["predeploy_check", "--skip", "gpu", "--skip", "alert-rules", "--skip", "rollback-triggers"], environment
    )

    assert result.returncode == 1
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(line.startswith("[FAIL] deploy-settings") and "security.W009" in line for line in lines), lines
    assert any(line.startswith("[SKIP] gpu") for line in lines)
    assert any(line.startswith("[PASS] imports") for line in lines)
    assert "1 of 7 checks failed: deploy-settings" in result.stderr


# --- each check on its own, in this process ---------------------------------------------------------------


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make a module unimportable, as it is on a branch that lacks it."""

    def hide(name: str) -> None:
        monkeypatch.setitem(sys.modules, name, None)

    return hide


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a module object under a name (for another app's functions whose results a test must choose)."""

    def install(name: str, **functions: Any) -> None:
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**functions))

    return install


def test_a_missing_operations_module_is_one_clear_fail_line(without: Any) -> None:
    without("operations.environment")
    without("operations.triggers")

    gpu = predeploy.check_gpu()
    triggers = predeploy.check_rollback_triggers()

    assert not gpu.passed and "operations.environment.verify_environment is missing" in gpu.detail
    assert not triggers.passed and "operations.triggers.load_rollback_triggers is missing" in triggers.detail


def test_a_module_that_fails_to_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "brokenapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("VALUE = 1\n")
    (package / "dangling.py").write_text("from brokenapp.gone import thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(predeploy, "PROJECT_PACKAGES", ("brokenapp",))

    result = predeploy.check_imports()

    assert not result.passed
    assert "1 of 2 modules fail to import" in result.detail
    assert "brokenapp.dangling (ModuleNotFoundError: No module named 'brokenapp.gone')" in result.detail


def _namespaces(root: Path, *specs: dict[str, Any]) -> Path:
    """A MEDKG_CONFIG_DIR whose namespaces are the given specs."""
    directory = root / "embedding" / "namespaces"
    directory.mkdir(parents=True)
    for spec in specs:
        (directory / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    return root


def _seed(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "config" / "embedding" / "namespaces" / f"{name}.yaml").read_text()
    )
    return spec


MINILM_SPEC = _seed("single_vector.minilm.384.v1")
QWEN3_SPEC = _seed("single_vector.qwen3.4096.v1")  # requires_gpu, served by vLLM at ${VLLM_URL}
IN_PROCESS_GPU_SPEC = {**MINILM_SPEC, "name": "single_vector.gpu.384.v1", "requires_gpu": True}


@pytest.mark.parametrize(
    ("local_gpu", "vllm_up", "passed", "says"),
    [
        (False, True, True, "GPU namespaces can serve (single_vector.qwen3.4096.v1); no local GPU (no CUDA device)"),
        (False, False, False, "single_vector.qwen3.4096.v1: its GPU server is not ready"),
        (True, True, True, "local GPU: ['H100'], driver 550.54, CUDA 12.4"),
    ],
)
def test_gpu_check_for_a_namespace_on_vllm(
    local_gpu: bool,
    vllm_up: bool,
    passed: bool,
    says: str,
    stand_in: Any,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.MEDKG_CONFIG_DIR = _namespaces(tmp_path, MINILM_SPEC, QWEN3_SPEC)
    report = {
        "available": local_gpu,
        "devices": ["H100"],
        "driver": "550.54",
        "cuda": "12.4",
        "reason": "no CUDA device",
    }
    stand_in("operations.environment", verify_environment=lambda: report)
    with vllm_health() as vllm_url:
        monkeypatch.setenv("VLLM_URL", vllm_url if vllm_up else "http://127.0.0.1:9")

        result = predeploy.check_gpu()

    assert result.passed is passed, result.detail
    assert says in result.detail


@pytest.mark.parametrize(("local_gpu", "passed"), [(False, False), (True, True)])
def test_gpu_check_for_a_namespace_in_process(
    local_gpu: bool, passed: bool, stand_in: Any, settings: Any, tmp_path: Path
) -> None:
    settings.MEDKG_CONFIG_DIR = _namespaces(tmp_path, MINILM_SPEC, IN_PROCESS_GPU_SPEC)
    stand_in("operations.environment", verify_environment=lambda: {"available": local_gpu, "reason": "no driver"})

    result = predeploy.check_gpu()

    assert result.passed is passed
    if not passed:
        assert "single_vector.gpu.384.v1 run(s) in this process and need(s) a GPU" in result.detail
        assert "no local GPU (no driver)" in result.detail


def test_gpu_check_without_gpu_namespaces_needs_nothing(settings: Any, tmp_path: Path, without: Any) -> None:
    settings.MEDKG_CONFIG_DIR = _namespaces(tmp_path, MINILM_SPEC, {**QWEN3_SPEC, "enabled": False})
    without("operations.environment")

    result = predeploy.check_gpu()

    assert result.passed and result.detail == "no enabled namespace needs a GPU"


RULES = """
groups:
  - name: example
    rules:
      - alert: EmbeddingExampleDown
        expr: up{job="medkg-web"} == 0
        for: 1m
"""
RULE_TEST = """
rule_files: [../embeddings.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="medkg-web"}'
        values: '0x5'
    alert_rule_test:
      - eval_time: 3m
        alertname: EmbeddingExampleDown
        exp_alerts: [{exp_labels: {job: medkg-web}}]
"""


def _monitoring(root: Path, *, rules: str, test: str | None) -> Path:
    monitoring = root / "deploy" / "monitoring"
    (monitoring / "tests").mkdir(parents=True)
    (monitoring / "embeddings.rules.yaml").write_text(rules)
    if test is not None:
        (monitoring / "tests" / "example.yaml").write_text(test)
    return root


@pytest.mark.parametrize(
    ("rules", "test", "passed", "says"),
    [
        (RULES, RULE_TEST, True, "embeddings.rules.yaml valid; 1 promtool unit test file(s) pass"),
        (RULES.replace("== 0", "== = 0"), RULE_TEST, False, "promtool check rules:"),
        (RULES, RULE_TEST.replace("0x5", "1x5"), False, "promtool test rules:"),
        (RULES, None, False, "no promtool unit tests in deploy/monitoring/tests"),
    ],
)
def test_alert_rules_are_checked_and_unit_tested_with_promtool(
    rules: str, test: str | None, passed: bool, says: str, settings: Any, tmp_path: Path
) -> None:
    settings.BASE_DIR = _monitoring(tmp_path, rules=rules, test=test)

    result = predeploy.check_alert_rules()

    assert result.passed is passed, result.detail
    assert says in result.detail


def test_missing_rules_or_promtool_fail(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.BASE_DIR = tmp_path
    assert predeploy.check_alert_rules().detail == "deploy/monitoring/embeddings.rules.yaml is missing"

    settings.BASE_DIR = _monitoring(tmp_path, rules=RULES, test=RULE_TEST)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert predeploy.check_alert_rules().detail == "promtool is not on PATH (Debian package prometheus)"


def _triggers(root: Path, *, watched: list[str], shown: list[str]) -> None:
    (root / "config" / "monitoring").mkdir(parents=True)
    triggers = {
        "triggers": [{"name": f"trigger-{i}", "query": f"rate({metric}[5m]) > 1"} for i, metric in enumerate(watched)]
    }
    (root / "config" / "monitoring" / "rollback_triggers.yaml").write_text(
        "# embedding_named_only_in_a_comment_total is not watched\n" + yaml.safe_dump(triggers)
    )
    dashboards = root / "deploy" / "monitoring" / "grafana" / "dashboards"
    dashboards.mkdir(parents=True)
    panels = [{"title": metric, "targets": [{"expr": f"sum(rate({metric}[5m]))"}]} for metric in shown]
    (dashboards / "embeddings.json").write_text(json.dumps({"panels": [{"type": "row", "panels": panels}]}))


@pytest.mark.parametrize(
    ("watched", "shown", "passed", "says"),
    [
        (
            ["embedding_requests_total", "embedding_request_duration_seconds_bucket"],
            [
                "embedding_requests_total",
                "embedding_request_duration_seconds_bucket",
                "embedding_vectors_produced_total",
            ],
            True,
            "the 2 metric(s) it watches are exported and on the dashboard",
        ),
        (
            ["embedding_requests_total", "embedding_provider_errors_total"],
            ["embedding_requests_total"],
            False,
            "metrics not on the dashboard deploy/monitoring/grafana/dashboards/embeddings.json: embedding_provider_errors",
        ),
        (
            ["embedding_no_such_metric_total"],
            ["embedding_no_such_metric_total"],
            False,
            "metrics the app does not export: embedding_no_such_metric",
        ),
    ],
)
def test_rollback_triggers_are_valid_and_on_the_dashboard(
    watched: list[str], shown: list[str], passed: bool, says: str, stand_in: Any, settings: Any, tmp_path: Path
) -> None:
    _triggers(tmp_path, watched=watched, shown=shown)
    settings.BASE_DIR = tmp_path
    settings.MEDKG_CONFIG_DIR = tmp_path / "config"
    stand_in("operations.triggers", load_rollback_triggers=lambda path=None: ["loaded"])

    result = predeploy.check_rollback_triggers()

    assert result.passed is passed, result.detail
    assert says in result.detail


def test_an_invalid_triggers_file_is_reported_with_the_loaders_reason(
    stand_in: Any, settings: Any, tmp_path: Path
) -> None:
    _triggers(tmp_path, watched=[], shown=[])
    settings.MEDKG_CONFIG_DIR = tmp_path / "config"

    def refuse(path: Path | None = None) -> None:
        raise ValueError("latency.threshold_ms: must be positive")

    stand_in("operations.triggers", load_rollback_triggers=refuse)

    result = predeploy.check_rollback_triggers()

    assert not result.passed
    assert result.detail.endswith("rollback_triggers.yaml invalid: latency.threshold_ms: must be positive")


def test_check_deploy_line_names_the_warnings_of_development_settings() -> None:
    result = predeploy.check_deploy_settings()

    assert not result.passed
    assert "security.W009" in result.detail and "MEDKG_ENVIRONMENT=development" in result.detail


def test_the_command_prints_a_line_per_check_and_skips_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    skipped = [name for name in predeploy.CHECKS if name != "configuration"]

    call_command("predeploy_check", *[f"--skip={name}" for name in skipped])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Pre-deployment checklist (MEDKG_ENVIRONMENT=development)"
    assert [line.split()[0] for line in lines[1:-1]] == ["[SKIP]"] * 2 + ["[PASS]"] + ["[SKIP]"] * 4
    seeded = len(list((REPO_ROOT / "config" / "embedding" / "namespaces").glob("*.yaml")))
    assert f"{seeded} namespace file(s), embedding/vllm.yaml and embedding/pyserini.yaml valid" in lines[3]
    assert lines[-1] == "predeploy_check: ready to deploy (7 checks)"


def test_the_command_fails_with_the_failed_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CommandError, match="1 of 7 checks failed: deploy-settings"):
        call_command(
            "predeploy_check", "--json", *[f"--skip={name}" for name in predeploy.CHECKS if name != "deploy-settings"]
        )

    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    assert [check["status"] for check in report["checks"]] == ["SKIP"] * 6 + ["FAIL"]
