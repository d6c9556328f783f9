"""The house stays layered: core <- namespaces <- embeddings <- operations <- medkg.

Every import of every module (at the top or inside a function) is read with `ast`; an app may import its own layer
and the layers below it, never one above. Domain apps hold no DRF view or serializer, and no module imports
another app's private (`_name`) names.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

LAYERS = ["core", "namespaces", "embeddings", "operations", "medkg"]
RANK = {name: rank for rank, name in enumerate(LAYERS)}
DOMAIN_APPS = ["namespaces", "embeddings", "operations"]
HTTP_MODULES = (
    "rest_framework.views",
    "rest_framework.generics",
    "rest_framework.viewsets",
    "rest_framework.serializers",
)


def modules() -> Iterator[tuple[str, Path]]:
    for layer in LAYERS:
        for path in sorted((REPO_ROOT / layer).rglob("*.py")):
            if "migrations" not in path.parts:
                yield layer, path


def imports_of(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def violations() -> list[str]:
    found = []
    for layer, path in modules():
        where = path.relative_to(REPO_ROOT)
        for line, module, names in imports_of(path):
            top = module.split(".")[0]
            if top in RANK and RANK[top] > RANK[layer]:
                found.append(f"{where}:{line}: {layer} imports {module} (a layer above it)")
            if top in RANK and top != layer and any(name.startswith("_") for name in names):
                private = ", ".join(name for name in names if name.startswith("_"))
                found.append(f"{where}:{line}: imports {private} from {module} (private to another app)")
            if layer in DOMAIN_APPS and (module in HTTP_MODULES or module.startswith("drf_spectacular")):
                found.append(f"{where}:{line}: {layer} imports {module} (HTTP lives in medkg/api)")
            if layer in DOMAIN_APPS and module == "rest_framework" and {"serializers", "views"} & set(names):
                found.append(f"{where}:{line}: {layer} imports rest_framework.{names} (HTTP lives in medkg/api)")
    return found


def test_imports_run_one_way_down_the_layers() -> None:
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_layer_is_a_package_and_core_imports_no_app() -> None:
    for layer in LAYERS:
        assert (REPO_ROOT / layer / "__init__.py").is_file(), layer
    core_imports = {
        module.split(".")[0]
        for _, path in modules()
        if path.is_relative_to(REPO_ROOT / "core")
        for _, module, _ in imports_of(path)
    }
    assert not core_imports & set(LAYERS[1:])


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        ("namespaces", "from embeddings.services import x\n", "namespaces imports embeddings.services"),
        ("core", "def f():\n    import medkg.settings\n", "core imports medkg.settings"),
        ("operations", "from embeddings.ingestion import _job_create\n", "private to another app"),
        ("operations", "from rest_framework.views import APIView\n", "HTTP lives in medkg/api"),
    ],
)
def test_the_check_names_the_file_and_the_import(tmp_path, monkeypatch, layer, source, expected) -> None:
    """The checker itself catches each kind of violation (run on a throwaway tree)."""
    (tmp_path / layer).mkdir()
    (tmp_path / layer / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    found = violations()
    assert len(found) == 1 and found[0].startswith(f"{layer}/bad.py:") and expected in found[0]
