"""Lazy import of pluggable backends (providers, stores) named in a registry.

A missing optional package fails only the namespaces that need that backend, with a clear message.
"""

from __future__ import annotations

import importlib
from typing import Any

from medkg.errors import BackendUnavailable


def backend_class(registry: dict[str, str], name: str, *, kind: str) -> Any:
    """The class registered as `name` ("module.Class"), imported now; BackendUnavailable when it cannot be."""
    if name not in registry:
        raise BackendUnavailable(f"Unknown {kind} {name!r}; known: {sorted(registry)}.")
    module_name, _, class_name = registry[name].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendUnavailable(
            f"{kind.capitalize()} {name!r} needs the Python package {error.name!r}, which is not installed.",
            details={kind.replace(" ", "_"): name, "package": error.name},
        ) from error
    return getattr(module, class_name)
