"""What a document names, checked against the repository: management commands (and their arguments), make
targets, repository paths, metrics, URLs of the API, Kubernetes objects, alerts and environment variables.

`problems(markdown)` lists every name that does not exist, one line each.
"""

from __future__ import annotations

import functools
import glob
import re
import shlex
import subprocess
from collections.abc import Iterable

import yaml
from django.core.management import CommandError, get_commands, load_command_class
from django.urls import Resolver404, resolve

from operations.predeploy import METRIC_NAME, exported_metric_names, metric_base_name
from tests.deploy.manifests import DEPLOY, OVERLAYS, REPO_ROOT, render

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:manage\.py|entrypoint\.sh manage)\s+([a-z_]+)([^|;&)#>`\n]*)")
MAKE_TARGET = re.compile(r"(?<![\w/.-])make\s+([a-z][\w-]*)")
TOP_DIRS = "config|deploy|docs|tests|medkg|namespaces|embeddings|operations|bench|\\.ci"
REPO_PATH = re.compile(rf"(?<![\w./$-])((?:{TOP_DIRS})/[\w./*{{}}<>@-]*)")
ROOT_FILE = re.compile(
    r"(?<![\w./-])(Makefile|README\.md|pyproject\.toml|constraints\.txt|requirements(?:-\w+)?\.txt|\.dockerignore)\b"
)
FULL_URL = re.compile(r"https?://[\w.:-]+(/[^\s'\"`)\]<]*)?")
API_PATH = re.compile(r"(?<![\w.:/$-])(/(?:v1|health|metrics|admin|static)\b[^\s'\"`)\]<]*)")
API_PREFIXES = {"/v1", "/admin", "/static", "/admin/"}
PLACEHOLDER = re.compile(r"\{[^}/]*\}|<[^>/]*>|\$\{?[A-Z_]+\}?")
SAMPLE_ID = "00000000-0000-0000-0000-000000000000"  # stands for any path parameter, a UUID included
KUBERNETES_REFERENCE = re.compile(r"\b(deployment|job|service|pvc|ingress|configmap|pdb)/([a-z0-9][a-z0-9-]*)")
KINDS = {
    "deployment": "Deployment",
    "job": "Job",
    "service": "Service",
    "pvc": "PersistentVolumeClaim",
    "ingress": "Ingress",
    "configmap": "ConfigMap",
    "pdb": "PodDisruptionBudget",
}
LABEL_SELECTOR = re.compile(r"app\.kubernetes\.io/name=([a-z0-9-]+)")
ALERT = re.compile(r"Embedding[A-Z][A-Za-z]+")
ENVIRONMENT_VARIABLE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def code_texts(markdown: str) -> list[str]:
    """The fenced blocks, then the inline code spans of the prose around them."""
    blocks = FENCED.findall(markdown)
    prose = FENCED.sub("", markdown)
    return [*blocks, *INLINE.findall(prose)]


def inline_spans(markdown: str) -> list[str]:
    return INLINE.findall(FENCED.sub("", markdown))


# --- commands and make targets ------------------------------------------------------------------------------


def _command_problem(name: str, rest: str) -> str | None:
    commands = get_commands()
    if name not in commands:
        return f"management command {name!r} does not exist"
    try:
        arguments = shlex.split(rest.strip())
    except ValueError:
        return None  # a quote closes on a later line: only the name is checked
    if not arguments:
        return None
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    try:
        parser.parse_args(arguments)
    except (CommandError, SystemExit) as error:
        return f"manage.py {name} {' '.join(arguments)}: arguments refused ({error})"
    return None


def command_problems(texts: Iterable[str]) -> list[str]:
    found = {(match[1], match[2]) for text in texts for match in COMMAND.finditer(text)}
    return sorted({problem for name, rest in found if (problem := _command_problem(name, rest))})


def make_target_problems(texts: Iterable[str]) -> list[str]:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.MULTILINE))
    named = {match for text in texts for match in MAKE_TARGET.findall(text)}
    return [f"make target {target!r} does not exist" for target in sorted(named - targets)]


# --- paths ----------------------------------------------------------------------------------------------------


def _git_ignored(path: str) -> bool:
    """A path git ignores is written at run time (deploy/secrets/, var/): named, never committed."""
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT, check=False, timeout=30)
    return result.returncode == 0


def _path_exists(path: str) -> bool:
    pattern = PLACEHOLDER.sub("*", path.rstrip("/"))
    if "*" in pattern:
        return bool(glob.glob(str(REPO_ROOT / pattern)))
    target = REPO_ROOT / pattern
    return target.is_dir() if path.endswith("/") else target.exists()


def path_problems(texts: Iterable[str]) -> list[str]:
    named = set()
    for text in texts:
        named |= {match.rstrip(".,:;") for match in REPO_PATH.findall(text)}
        named |= set(ROOT_FILE.findall(text))
    return [
        f"path {path} does not exist"
        for path in sorted(named)
        if path and not _path_exists(path) and not _git_ignored(path)
    ]


# --- metrics, URLs ----------------------------------------------------------------------------------------------


def metric_problems(markdown: str) -> list[str]:
    exported = exported_metric_names()
    known = exported | {metric_base_name(name) for name in exported}
    named = set(METRIC_NAME.findall(markdown))
    return [f"metric {name} is not exported by the app" for name in sorted(named - known)]


def _api_paths(text: str) -> set[str]:
    paths = {match for match in FULL_URL.findall(text) if match}
    paths |= set(API_PATH.findall(text))
    return {path.split("?")[0].rstrip(".,:;") for path in paths}


def url_problems(texts: Iterable[str]) -> list[str]:
    problems = []
    for path in sorted({path for text in texts for path in _api_paths(text)}):
        if path in API_PREFIXES or path.startswith("/static/"):
            continue  # a routing prefix (the Ingress's), or a collected static file
        if not path.startswith(("/v1", "/health", "/metrics", "/admin")):
            continue  # another server's URL (Prometheus, Grafana, OpenSearch)
        try:
            resolve(PLACEHOLDER.sub(SAMPLE_ID, path))
        except Resolver404:
            problems.append(f"URL {path} is not served")
    return problems


# --- Kubernetes objects, alerts, environment variables ---------------------------------------------------------


@functools.cache
def _kubernetes_objects() -> tuple[set[tuple[str, str]], set[str]]:
    objects = [item for overlay in OVERLAYS for item in render(overlay)]
    objects += list(yaml.safe_load_all((DEPLOY / "k8s" / "jobs" / "vllm-cache-seed.yaml").read_text()))
    names = {(item["kind"], item["metadata"]["name"]) for item in objects}
    names |= {
        (item["kind"], item["metadata"]["name"].rsplit("-", 1)[0]) for item in objects if item["kind"] == "ConfigMap"
    }
    labels = {item["metadata"].get("labels", {}).get("app.kubernetes.io/name") for item in objects}
    return names, {label for label in labels if label}


def kubernetes_problems(texts: Iterable[str]) -> list[str]:
    names, labels = _kubernetes_objects()
    problems = []
    for text in texts:
        for kind, name in KUBERNETES_REFERENCE.findall(text):
            if (KINDS[kind], name) not in names:
                problems.append(f"Kubernetes {kind}/{name} is in no overlay")
        problems += [
            f"no Kubernetes object is labelled {label}" for label in LABEL_SELECTOR.findall(text) if label not in labels
        ]
    return sorted(set(problems))


def alert_problems(spans: Iterable[str]) -> list[str]:
    named = {span for span in spans if ALERT.fullmatch(span)}
    if not named:
        return []
    rules_file = DEPLOY / "monitoring" / "embeddings.rules.yaml"
    if not rules_file.exists():
        return [f"alert {name}: {rules_file.relative_to(REPO_ROOT)} does not exist" for name in sorted(named)]
    rules = yaml.safe_load(rules_file.read_text())
    defined = {rule.get("alert") for group in rules.get("groups", []) for rule in group.get("rules", [])}
    return [f"alert {name} is not defined in {rules_file.name}" for name in sorted(named - defined)]


@functools.cache
def _code_and_deploy_text() -> str:
    """Every tracked file outside docs/ and tests/: where a documented variable must be read or set."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    texts = []
    for name in files:
        if name.startswith(("docs/", "tests/")) or not (REPO_ROOT / name).is_file():
            continue
        try:
            texts.append((REPO_ROOT / name).read_text())
        except UnicodeDecodeError:
            continue
    return "\n".join(texts)


def environment_problems(spans: Iterable[str]) -> list[str]:
    text = _code_and_deploy_text()
    named = {span for span in spans if ENVIRONMENT_VARIABLE.fullmatch(span)}
    return [
        f"variable {name} is read or set nowhere in the code or deploy files"
        for name in sorted(named)
        if not re.search(rf"\b{name}\b", text)
    ]


def problems(markdown: str) -> list[str]:
    texts = code_texts(markdown)
    spans = inline_spans(markdown)
    return [
        *command_problems(texts),
        *make_target_problems(texts),
        *path_problems(texts),
        *metric_problems(markdown),
        *url_problems(texts),
        *kubernetes_problems(texts),
        *alert_problems(spans),
        *environment_problems(spans),
    ]
