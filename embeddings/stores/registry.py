"""Store registry: the namespace (or MEDKG_VECTOR_STORE) names the backend, imported lazily.

Stores are cached per process and per configuration: a FAISS store keeps its indexes in memory. STORES and
SPARSE_STORES are the only lists of store names: settings validate MEDKG_VECTOR_STORE and MEDKG_SPARSE_STORE
against them, so this module imports no model at import time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings

from core.backends import backend_class
from core.errors import UnsupportedNamespaceKind
from embeddings.stores.base import SparseStore, SparseStoreConfig, StoreConfig, VectorStore

if TYPE_CHECKING:
    from namespaces.models import Namespace

STORES: dict[str, str] = {
    "faiss": "embeddings.stores.faiss.FaissStore",
    "opensearch": "embeddings.stores.opensearch.OpenSearchStore",
}
SPARSE_STORES: dict[str, str] = {
    "impact": "embeddings.stores.impact.ImpactStore",
    "opensearch": "embeddings.stores.opensearch_sparse.OpenSearchSparseStore",
    "lucene": "embeddings.stores.lucene.LuceneStore",
}

_instances: dict[tuple[StoreConfig | SparseStoreConfig, str], VectorStore | SparseStore] = {}
_lock = threading.Lock()


def store_config_for(namespace: Namespace) -> StoreConfig:
    if not namespace.dim:
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} has no fixed dimension; it cannot be stored in a dense vector store.",
            details={"namespace": namespace.name, "kind": namespace.kind},
        )
    parameters = namespace.parameters or {}
    return StoreConfig(
        namespace=namespace.name,
        dim=namespace.dim,
        backend=str(parameters.get("store") or settings.MEDKG_VECTOR_STORE),
        hnsw_m=int(parameters.get("hnsw_m", 32)),
        ef_construction=int(parameters.get("ef_construction", 200)),
        ef_search=int(parameters.get("ef_search", 64)),
        storage=str(parameters.get("vector_storage", "float32")),
        filterable=tuple(str(key) for key in parameters.get("filterable_metadata", [])),
    )


def sparse_store_config_for(namespace: Namespace) -> SparseStoreConfig:
    from namespaces.models import NamespaceKind  # here, not at import: settings import this module

    if namespace.kind != NamespaceKind.SPARSE:
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} is {namespace.kind}; it cannot be stored in a sparse store.",
            details={"namespace": namespace.name, "kind": namespace.kind},
        )
    parameters = namespace.parameters or {}
    return SparseStoreConfig(
        namespace=namespace.name,
        backend=str(parameters.get("store") or settings.MEDKG_SPARSE_STORE),
        parameters_json=json.dumps(parameters, sort_keys=True),
    )


def store_class(name: str) -> type[VectorStore]:
    return backend_class(STORES, name, kind="vector store")  # type: ignore[no-any-return]


def sparse_store_class(name: str) -> type[SparseStore]:
    return backend_class(SPARSE_STORES, name, kind="sparse store")  # type: ignore[no-any-return]


def _cached(config: StoreConfig | SparseStoreConfig, build: Callable[[], VectorStore | SparseStore]) -> Any:
    with _lock:
        key = (config, str(settings.FAISS_DATA_DIR))  # tests point FAISS_DATA_DIR elsewhere
        store = _instances.get(key)
        if store is None:
            store = build()
            _instances[key] = store
        return store


def store_for(namespace: Namespace) -> VectorStore:
    """The dense vector store of a single_vector namespace."""
    config = store_config_for(namespace)
    return _cached(config, lambda: store_class(config.backend)(config))  # type: ignore[no-any-return]


def sparse_store_for(namespace: Namespace) -> SparseStore:
    """The sparse store of a sparse namespace."""
    config = sparse_store_config_for(namespace)
    return _cached(config, lambda: sparse_store_class(config.backend)(config))  # type: ignore[no-any-return]


def index_for(namespace: Namespace) -> VectorStore | SparseStore:
    """Where the namespace's documents are indexed, whatever its kind."""
    from namespaces.models import NamespaceKind

    return sparse_store_for(namespace) if namespace.kind == NamespaceKind.SPARSE else store_for(namespace)
