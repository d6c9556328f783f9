"""Provider registry: the namespace's `provider` name picks the class, imported lazily.

A missing optional package fails only the namespaces that need it, with a clear message.
Providers are cached per process and per namespace configuration.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from embeddings.providers.base import EmbeddingProvider, ProviderConfig
from medkg.backends import backend_class

if TYPE_CHECKING:
    from namespaces.models import Namespace

PROVIDERS: dict[str, str] = {
    "sentence_transformers": "embeddings.providers.sentence_transformers.SentenceTransformersProvider",
    "vllm": "embeddings.providers.vllm_http.VllmHttpProvider",
    "vllm_http": "embeddings.providers.vllm_http.VllmHttpProvider",
}

_instances: dict[ProviderConfig, EmbeddingProvider] = {}
_lock = threading.Lock()


def provider_class(name: str) -> type[EmbeddingProvider]:
    return backend_class(PROVIDERS, name, kind="provider")  # type: ignore[no-any-return]


def provider_for(namespace: Namespace) -> EmbeddingProvider:
    config = ProviderConfig.from_namespace(namespace)
    with _lock:
        provider = _instances.get(config)
        if provider is None:
            provider = provider_class(config.provider)(config)
            _instances[config] = provider
        return provider


def providers_reset() -> None:
    """Forget cached providers (tests; a namespace edited in the admin gets a new config key anyway)."""
    with _lock:
        _instances.clear()
