"""Provider registry: the namespace's `provider` name picks the class, imported lazily.

A missing optional package fails only the namespaces that need it, with a clear message.
Providers are cached per process and per namespace configuration.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TypeVar

from core.backends import backend_class
from core.errors import UnsupportedNamespaceKind
from embeddings.providers.base import EmbeddingProvider, Provider, ProviderConfig, RerankProvider, SparseProvider

if TYPE_CHECKING:
    from namespaces.models import Namespace

PROVIDERS: dict[str, str] = {
    "sentence_transformers": "embeddings.providers.sentence_transformers.SentenceTransformersProvider",
    "vllm": "embeddings.providers.vllm_http.VllmHttpProvider",
    "vllm_http": "embeddings.providers.vllm_http.VllmHttpProvider",
    "splade": "embeddings.providers.splade.SpladeProvider",
    "bm25": "embeddings.providers.bm25.Bm25Provider",
    "cross_encoder": "embeddings.providers.cross_encoder.CrossEncoderProvider",
    "vllm_rerank": "embeddings.providers.vllm_rerank.VllmRerankProvider",
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


P = TypeVar("P", bound=Provider)


def _provider_of_kind(namespace: Namespace, kind: type[P], produces: str) -> P:
    provider = provider_for(namespace)
    if not isinstance(provider, kind):
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} ({namespace.provider}) does not produce {produces}.",
            details={"namespace": namespace.name, "provider": namespace.provider},
        )
    return provider


def embedding_provider_for(namespace: Namespace) -> EmbeddingProvider:
    return _provider_of_kind(namespace, EmbeddingProvider, "dense vectors")  # type: ignore[type-abstract]


def sparse_provider_for(namespace: Namespace) -> SparseProvider:
    return _provider_of_kind(namespace, SparseProvider, "term weights")  # type: ignore[type-abstract]


def rerank_provider_for(namespace: Namespace) -> RerankProvider:
    return _provider_of_kind(namespace, RerankProvider, "relevance scores")  # type: ignore[type-abstract]


def providers_reset() -> None:
    """Forget cached providers (tests; a namespace edited in the admin gets a new config key anyway)."""
    with _lock:
        _instances.clear()
