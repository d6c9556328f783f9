"""Provider registry: the namespace's `provider` name picks the class, imported lazily.

A missing optional package fails only the namespaces that need it, with a clear message.
Providers are cached per process and per namespace configuration.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from embeddings.providers.base import EmbeddingProvider, Provider, ProviderConfig, SparseProvider
from medkg.backends import backend_class
from medkg.errors import UnsupportedNamespaceKind

if TYPE_CHECKING:
    from namespaces.models import Namespace

PROVIDERS: dict[str, str] = {
    "sentence_transformers": "embeddings.providers.sentence_transformers.SentenceTransformersProvider",
    "vllm": "embeddings.providers.vllm_http.VllmHttpProvider",
    "vllm_http": "embeddings.providers.vllm_http.VllmHttpProvider",
    "splade": "embeddings.providers.splade.SpladeProvider",
    "bm25": "embeddings.providers.bm25.Bm25Provider",
}

_instances: dict[ProviderConfig, Provider] = {}
_lock = threading.Lock()


def provider_class(name: str) -> type[Provider]:
    return backend_class(PROVIDERS, name, kind="provider")  # type: ignore[no-any-return]


def provider_for(namespace: Namespace) -> Provider:
    """The namespace's provider, dense or sparse (readiness checks take either)."""
    config = ProviderConfig.from_namespace(namespace)
    with _lock:
        provider = _instances.get(config)
        if provider is None:
            provider = provider_class(config.provider)(config)
            _instances[config] = provider
        return provider


def embedding_provider_for(namespace: Namespace) -> EmbeddingProvider:
    provider = provider_for(namespace)
    if not isinstance(provider, EmbeddingProvider):
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} ({namespace.provider}) does not produce dense vectors.",
            details={"namespace": namespace.name, "provider": namespace.provider},
        )
    return provider


def sparse_provider_for(namespace: Namespace) -> SparseProvider:
    provider = provider_for(namespace)
    if not isinstance(provider, SparseProvider):
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} ({namespace.provider}) does not produce term weights.",
            details={"namespace": namespace.name, "provider": namespace.provider},
        )
    return provider


def providers_reset() -> None:
    """Forget cached providers (tests; a namespace edited in the admin gets a new config key anyway)."""
    with _lock:
        _instances.clear()
