"""Index templates of the sparse namespaces stored in OpenSearch as `rank_features` (`manage.py apply_rank_features`).

The desired template of a namespace is generated from its seed file (config/embedding/namespaces/*.yaml: the name,
hence the index, and the store) and from pyserini.yaml (the field and max_weight); see
embeddings.stores.opensearch_sparse.rank_features_template. Applying compares it with the cluster's template, shows
a unified diff of the two as sorted JSON, and PUTs the desired one only when they differ: a second run changes
nothing. A template shapes only indexes created after it: an existing index keeps its mapping (the store checks it
and refuses an index without the field; `manage.py rebuild_index` recreates it).
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError

from core.errors import BackendError, InvalidRequest
from core.logging import log_event
from embeddings.stores.opensearch_index import STORE, index_name, opensearch_client, translated_errors
from embeddings.stores.opensearch_sparse import rank_features_template
from namespaces.config import NamespaceSpec, load_namespace_specs, pyserini_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplateChange:
    namespace: str
    template: str  # the template's name: the namespace's index name
    diff: str  # unified diff from the cluster's template to the desired one; "" when they are the same
    applied: bool  # PUT sent (False for a dry run, and when nothing changed)


def sparse_store_of(spec: NamespaceSpec) -> str:
    """Where a sparse namespace's documents go: its `parameters.store`, else MEDKG_SPARSE_STORE (as the registry)."""
    return str(spec.parameters.get("store") or settings.MEDKG_SPARSE_STORE)


def rank_features_namespaces(*, name: str | None = None) -> list[NamespaceSpec]:
    """The sparse namespaces of the seed files stored in OpenSearch, or the one named.

    A named namespace may be one not stored in OpenSearch yet (MEDKG_SPARSE_STORE says impact): applying its
    template first is how a move to OpenSearch starts. One pinned to another store (`parameters.store`, e.g. BM25's
    lucene) is refused.
    """
    directory = Path(settings.MEDKG_CONFIG_DIR) / "embedding" / "namespaces"
    specs = [spec for _, spec in load_namespace_specs(directory)]
    if name is None:
        return [spec for spec in specs if spec.kind == "sparse" and sparse_store_of(spec) == STORE]
    spec = next((spec for spec in specs if spec.name == name), None)
    if spec is None:
        known = ", ".join(sorted(spec.name for spec in specs if spec.kind == "sparse")) or "none"
        raise InvalidRequest(
            f"No namespace {name!r} in {directory}. Sparse namespaces: {known}.", details={"namespace": name}
        )
    if spec.kind != "sparse":
        raise InvalidRequest(
            f"Namespace {name} is {spec.kind}: only sparse namespaces have rank_features templates.",
            details={"namespace": name, "kind": spec.kind},
        )
    pinned = spec.parameters.get("store")
    if pinned and pinned != STORE:
        raise InvalidRequest(
            f"Namespace {name} is stored in {pinned} (parameters.store), not in OpenSearch: it has no template.",
            details={"namespace": name, "store": str(pinned)},
        )
    return [spec]


def _flat_settings(settings_: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Index settings as GET returns them with flat_settings: dotted keys, every value a string."""
    flat: dict[str, str] = {}
    for key, value in settings_.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_settings(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, bool) else str(value)
    return flat


def template_text(template: dict[str, Any]) -> str:
    """A template as sorted, indented JSON, in the form the cluster returns it: settings flattened to strings and
    no empty `composed_of` (GET adds one), so that the same template reads the same from either side."""
    normal = json.loads(json.dumps(template))
    if normal.get("composed_of") == []:
        del normal["composed_of"]
    inner = normal.get("template")
    if isinstance(inner, dict) and isinstance(inner.get("settings"), dict):
        inner["settings"] = _flat_settings(inner["settings"])
    return json.dumps(normal, indent=2, sort_keys=True) + "\n"


def template_diff(*, name: str, current: dict[str, Any] | None, desired: dict[str, Any]) -> str:
    """Unified diff of the cluster's template (None: there is none) to the desired one; "" when they are equal."""
    before = template_text(current).splitlines(keepends=True) if current is not None else []
    after = template_text(desired).splitlines(keepends=True)
    source = f"_index_template/{name} (cluster)" if current is not None else f"_index_template/{name} (none)"
    return "".join(difflib.unified_diff(before, after, fromfile=source, tofile=f"_index_template/{name} (desired)"))


def _current_template(client: OpenSearch, *, namespace: str, name: str) -> dict[str, Any] | None:
    with translated_errors(namespace=namespace, operation="get_index_template"):
        try:
            response = client.indices.get_index_template(name=name, flat_settings=True)
        except NotFoundError:
            return None
    try:
        found = [entry["index_template"] for entry in response["index_templates"] if entry["name"] == name]
    except (KeyError, TypeError) as error:
        raise BackendError(
            f"OpenSearch answered GET _index_template/{name} with an unexpected body.",
            details={"namespace": namespace, "store": STORE, "template": name},
        ) from error
    return dict(found[0]) if found else None


def rank_features_templates_apply(*, namespace: str | None = None, dry_run: bool = False) -> list[TemplateChange]:
    """Bring the rank_features template of each OpenSearch sparse namespace (or of `namespace`) to what the seed
    files and pyserini.yaml say; with `dry_run`, only say what would change."""
    client = opensearch_client()  # first: without OPENSEARCH_URL there is nothing to compare with
    specs = rank_features_namespaces(name=namespace)
    options = pyserini_config().opensearch
    changes: list[TemplateChange] = []
    for spec in specs:
        name = index_name(spec.name)
        desired = rank_features_template(
            namespace=spec.name, field=options.rank_features_field, max_weight=float(options.max_weight)
        )
        current = _current_template(client, namespace=spec.name, name=name)
        diff = template_diff(name=name, current=current, desired=desired)
        applied = bool(diff) and not dry_run
        if applied:
            with translated_errors(namespace=spec.name, operation="put_index_template"):
                client.indices.put_index_template(name=name, body=desired)
            log_event(logger, "rank_features_template_applied", namespace=spec.name, template=name)
        changes.append(TemplateChange(namespace=spec.name, template=name, diff=diff, applied=applied))
    return changes
