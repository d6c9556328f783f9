"""Store registry: the namespace (or MEDKG_VECTOR_STORE) names the backend, imported lazily.

Stores are cached per process and per configuration: a FAISS store keeps its indexes in memory.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from django.conf import settings

from embeddings.stores.base import StoreConfig, VectorStore
from medkg.backends import backend_class
from medkg.errors import UnsupportedNamespaceKind

if TYPE_CHECKING:
    from namespaces.models import Namespace

STORES: dict[str, str] = {
    "faiss": "embeddings.stores.faiss.FaissStore",
    "opensearch": "embeddings.stores.opensearch.OpenSearchStore",
}

_instances: dict[tuple[StoreConfig, str], VectorStore] = {}
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
    )


def store_class(name: str) -> type[VectorStore]:
    return backend_class(STORES, name, kind="vector store")  # type: ignore[no-any-return]


def store_for(namespace: Namespace) -> VectorStore:
    config = store_config_for(namespace)
    with _lock:
        key = (config, str(settings.FAISS_DATA_DIR))  # tests point FAISS_DATA_DIR elsewhere
        store = _instances.get(key)
        if store is None:
            store = store_class(config.backend)(config)
            _instances[key] = store
        return store


def stores_reset() -> None:
    """Forget cached stores (tests, and after index files were replaced out of band)."""
    with _lock:
        _instances.clear()
