"""The runbook's pre-deployment checklist as code (manage.py predeploy_check).

Each check returns a CheckResult; none raises. Checks that depend on the operations features of the
rollback work (operations.environment, operations.triggers, the alert rules) import them when they run,
so a missing piece is one FAIL line naming it, never a crash of the whole checklist.
"""

from __future__ import annotations

import importlib
import io
import json
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from prometheus_client import REGISTRY

from core.errors import ConfigError, MedkgError

PROJECT_PACKAGES = ("core", "medkg", "namespaces", "embeddings", "operations")
RULES_FILE = Path("deploy/monitoring/embeddings.rules.yaml")
RULE_TESTS_DIR = Path("deploy/monitoring/tests")
DASHBOARD_FILE = Path("deploy/monitoring/grafana/dashboards/embeddings.json")
TRIGGERS_FILE = Path("monitoring/rollback_triggers.yaml")  # under MEDKG_CONFIG_DIR
# Names of this project's metrics: embedding_* and the access counter medicalkg_*.
METRIC_NAME = re.compile(r"\b((?:embedding|medicalkg)_[a-z0-9_]*[a-z0-9])\b")
_SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
_SAMPLES_OF_TYPE = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


def _repo_path(relative: Path) -> Path:
    return Path(settings.BASE_DIR) / relative


def _shown(path: Path) -> str:
    """A path as the runbook names it: relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(settings.BASE_DIR))
    except ValueError:
        return str(path)


# --- metric names, shared with the documentation tests ---------------------------------------------


def exported_metric_names() -> set[str]:
    """Every sample name the app's Prometheus registry can export (x_total, x_bucket, ...), labelled or not."""
    import_project_modules()  # metrics are registered when their module is imported
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(f"{family.name}{suffix}" for suffix in _SAMPLES_OF_TYPE.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_base_name(name: str) -> str:
    """embedding_x_seconds_bucket -> embedding_x_seconds: one name per metric whatever sample is queried."""
    for suffix in _SAMPLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def metric_names_in(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


# --- the checks ------------------------------------------------------------------------------------------


def import_project_modules() -> tuple[int, list[tuple[str, str]]]:
    """Import every module of the project's packages: how many there are, and (module, error) for each failure."""
    failures: list[tuple[str, str]] = []
    count = 0

    def record(name: str) -> None:
        failures.append((name, "cannot be walked into"))

    for package_name in PROJECT_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.", onerror=record):
            count += 1
            try:
                importlib.import_module(module.name)
            except Exception as error:  # noqa: BLE001 - whatever a module raises at import is what this check reports
                failures.append((module.name, f"{type(error).__name__}: {error}"))
    return count, failures


def check_imports() -> CheckResult:
    count, failures = import_project_modules()
    if failures:
        listed = "; ".join(f"{name} ({error})" for name, error in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        return CheckResult("imports", False, f"{len(failures)} of {count} modules fail to import: {listed}{more}")
    return CheckResult("imports", True, f"{count} modules of {', '.join(PROJECT_PACKAGES)} import")


def check_migrations() -> CheckResult:
    output = io.StringIO()
    try:
        call_command("makemigrations", check=True, dry_run=True, stdout=output, stderr=output, verbosity=1)
    except SystemExit as exit_:
        if exit_.code:
            pending = " ".join(output.getvalue().split())[:400]
            return CheckResult("migrations", False, f"models changed without a migration: {pending}")
    return CheckResult("migrations", True, "every model change has its migration (makemigrations --check)")


def check_configuration() -> CheckResult:
    from namespaces.config import load_namespace_specs, load_pyserini_config, load_vllm_config

    config_dir = Path(settings.MEDKG_CONFIG_DIR)
    try:
        specs = load_namespace_specs(config_dir / "embedding" / "namespaces")
        load_vllm_config(config_dir / "embedding" / "vllm.yaml")
        load_pyserini_config(config_dir / "embedding" / "pyserini.yaml")
    except ConfigError as error:
        return CheckResult("configuration", False, str(error))
    detail = f"{len(specs)} namespace file(s), embedding/vllm.yaml and embedding/pyserini.yaml valid"
    return CheckResult("configuration", True, detail)


def _report_field(report: Any, name: str) -> Any:
    return report.get(name) if isinstance(report, Mapping) else getattr(report, name, None)


def _remote_readiness(spec: Any) -> tuple[bool, str]:
    """Readiness of a namespace served by a GPU server elsewhere (vLLM), as /health would report it."""
    from embeddings.providers.base import ProviderConfig
    from embeddings.providers.registry import provider_class
    from namespaces.models import Namespace

    model_fields = {field.name for field in Namespace._meta.concrete_fields}
    namespace = Namespace(**{key: value for key, value in spec.model_dump().items() if key in model_fields})
    try:
        readiness = provider_class(spec.provider)(ProviderConfig.from_namespace(namespace)).readiness()
    except MedkgError as error:
        return False, error.message
    return readiness.ready, readiness.detail


def check_gpu() -> CheckResult:
    from namespaces.config import load_namespace_specs

    try:
        specs = load_namespace_specs(Path(settings.MEDKG_CONFIG_DIR) / "embedding" / "namespaces")
    except ConfigError as error:
        return CheckResult("gpu", False, f"namespace configuration invalid: {error}")
    needing = [spec for _, spec in specs if spec.enabled and spec.requires_gpu]
    if not needing:
        return CheckResult("gpu", True, "no enabled namespace needs a GPU")
    try:
        from operations.environment import verify_environment
    except ImportError as error:
        return CheckResult("gpu", False, f"operations.environment.verify_environment is missing ({error})")
    report = verify_environment()
    available = bool(_report_field(report, "available"))
    if available:
        local = f"local GPU: {_report_field(report, 'devices')}, driver {_report_field(report, 'driver')}"
        local += f", CUDA {_report_field(report, 'cuda')}"
    else:
        local = f"no local GPU ({_report_field(report, 'reason')})"
    problems: list[str] = []
    in_process = [spec.name for spec in needing if not spec.endpoint]
    if in_process and not available:
        problems.append(f"{', '.join(in_process)} run(s) in this process and need(s) a GPU")
    for spec in needing:
        if spec.endpoint:
            ready, detail = _remote_readiness(spec)
            if not ready:
                problems.append(f"{spec.name}: its GPU server is not ready: {detail}")
    names = ", ".join(spec.name for spec in needing)
    if problems:
        return CheckResult("gpu", False, f"{'; '.join(problems)}; {local}")
    return CheckResult("gpu", True, f"GPU namespaces can serve ({names}); {local}")


def _promtool(executable: str, arguments: list[str], cwd: Path) -> tuple[bool, str]:
    result = subprocess.run(  # noqa: S603 - fixed executable, arguments are repository paths
        [executable, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = " ".join((result.stdout + result.stderr).split())
    return result.returncode == 0, output[-500:]


def check_alert_rules() -> CheckResult:
    rules = _repo_path(RULES_FILE)
    if not rules.is_file():
        return CheckResult("alert-rules", False, f"{RULES_FILE} is missing")
    promtool = shutil.which("promtool")
    if promtool is None:
        return CheckResult("alert-rules", False, "promtool is not on PATH (Debian package prometheus)")
    valid, output = _promtool(promtool, ["check", "rules", str(rules)], cwd=rules.parent)
    if not valid:
        return CheckResult("alert-rules", False, f"promtool check rules: {output}")
    tests = sorted(_repo_path(RULE_TESTS_DIR).glob("*.y*ml"))
    if not tests:
        return CheckResult("alert-rules", False, f"no promtool unit tests in {RULE_TESTS_DIR}")
    passed, output = _promtool(promtool, ["test", "rules", *(str(test) for test in tests)], cwd=tests[0].parent)
    if not passed:
        return CheckResult("alert-rules", False, f"promtool test rules: {output}")
    return CheckResult("alert-rules", True, f"{RULES_FILE} valid; {len(tests)} promtool unit test file(s) pass")


def _dashboard_expressions(dashboard: Any) -> Iterable[str]:
    """Every `expr` string of a Grafana dashboard, in rows, panels and nested panels alike."""
    if isinstance(dashboard, dict):
        for key, value in dashboard.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_expressions(value)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from _dashboard_expressions(item)


def check_rollback_triggers() -> CheckResult:
    try:
        from operations.triggers import load_rollback_triggers
    except ImportError as error:
        return CheckResult(
            "rollback-triggers", False, f"operations.triggers.load_rollback_triggers is missing ({error})"
        )
    triggers_path = Path(settings.MEDKG_CONFIG_DIR) / TRIGGERS_FILE
    try:
        load_rollback_triggers()  # validates the file
    except Exception as error:  # noqa: BLE001 - the loader's own errors say what is wrong with the file
        return CheckResult("rollback-triggers", False, f"{_shown(triggers_path)} invalid: {error}")
    dashboard_path = _repo_path(DASHBOARD_FILE)
    try:
        dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
        # Parsed and dumped again: a metric named only in a comment is not one the triggers watch.
        trigger_text = yaml.safe_dump(yaml.safe_load(triggers_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, yaml.YAMLError) as error:
        return CheckResult("rollback-triggers", False, f"cannot compare with the dashboard: {error}")
    watched = {metric_base_name(name) for name in metric_names_in(trigger_text)}
    shown = {metric_base_name(name) for expr in _dashboard_expressions(dashboard) for name in metric_names_in(expr)}
    exported = {metric_base_name(name) for name in exported_metric_names()}
    problems = []
    if watched - exported:
        problems.append(f"metrics the app does not export: {', '.join(sorted(watched - exported))}")
    if watched - shown:
        problems.append(f"metrics not on the dashboard {DASHBOARD_FILE}: {', '.join(sorted(watched - shown))}")
    if problems:
        return CheckResult("rollback-triggers", False, "; ".join(problems))
    return CheckResult(
        "rollback-triggers",
        True,
        f"{_shown(triggers_path)} valid; the {len(watched)} metric(s) it watches are exported and on the dashboard",
    )


def check_deploy_settings() -> CheckResult:
    output = io.StringIO()
    try:
        call_command("check", deploy=True, fail_level="WARNING", stdout=output, stderr=output)
    except SystemCheckError as error:
        identifiers = sorted(set(re.findall(r"\(([a-z_]+\.[EW]\d+)\)", str(error))))
        return CheckResult(
            "deploy-settings",
            False,
            f"{', '.join(identifiers) or str(error)[:300]} (MEDKG_ENVIRONMENT={settings.MEDKG_ENVIRONMENT})",
        )
    return CheckResult("deploy-settings", True, f"no issues (MEDKG_ENVIRONMENT={settings.MEDKG_ENVIRONMENT})")


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "imports": check_imports,
    "migrations": check_migrations,
    "configuration": check_configuration,
    "gpu": check_gpu,
    "alert-rules": check_alert_rules,
    "rollback-triggers": check_rollback_triggers,
    "deploy-settings": check_deploy_settings,
}


def predeploy_run(
    *, skip: Iterable[str] = (), on_result: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    """Run every check in order (those in `skip` are reported as skipped); `on_result` sees each as it ends."""
    skipped = set(skip)
    results = []
    for key, check in CHECKS.items():
        result = CheckResult(key, True, "skipped (--skip)", skipped=True) if key in skipped else check()
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
