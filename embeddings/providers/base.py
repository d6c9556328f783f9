"""The provider interface and the small value types it speaks.

A provider turns texts into vectors for one namespace. It raises only the
project's errors (BackendUnavailable, BackendError, DimensionMismatch, ...).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.backends import install_hint
from core.errors import BackendUnavailable

if TYPE_CHECKING:
    from namespaces.models import Namespace

_ENV_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


@dataclass(frozen=True)
class ProviderConfig:
    """What a provider needs from its namespace, frozen so a cached provider never sees a half-edited row."""

    namespace: str
    provider: str
    model_id: str
    model_path: str
    model_version: str
    dim: int | None
    max_tokens: int
    tokenizer: str
    pooling: str
    normalize: bool
    batch_size: int
    requires_gpu: bool
    endpoint: str
    parameters_json: str = "{}"  # JSON text keeps the dataclass hashable and frozen

    @classmethod
    def from_namespace(cls, namespace: Namespace) -> ProviderConfig:
        return cls(
            namespace=namespace.name,
            provider=namespace.provider,
            model_id=namespace.model_id,
            model_path=namespace.model_path,
            model_version=namespace.model_version,
            dim=namespace.dim,
            max_tokens=namespace.max_tokens,
            tokenizer=namespace.tokenizer,
            pooling=namespace.pooling,
            normalize=namespace.normalize,
            batch_size=namespace.batch_size,
            requires_gpu=namespace.requires_gpu,
            endpoint=namespace.endpoint,
            parameters_json=json.dumps(namespace.parameters or {}, sort_keys=True),
        )

    def parameter(self, name: str, default: Any = None) -> Any:
        return json.loads(self.parameters_json).get(name, default)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str = ""


class Provider(ABC):
    """A namespace's model. Implementations are shared by threads: they must be thread-safe."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @abstractmethod
    def readiness(self) -> Readiness:
        """Whether the provider can serve now, and why not."""


@dataclass(frozen=True)
class Tokenized:
    """One text as the model's tokenizer cuts it: token ids and their strings, special tokens included."""

    ids: list[int]
    tokens: list[str]


class EmbeddingProvider(Provider):
    """Embeds texts into dense vectors for one single_vector namespace."""

    # True when the backend serves its own tokenizer (vLLM's /tokenize): used where no local tokenizer is.
    tokenizes = False

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        """The backend's tokenization of each text, in input order (only where `tokenizes`)."""
        raise NotImplementedError

    @abstractmethod
    def embed(self, texts: Sequence[str], *, normalize: bool, truncate: bool) -> np.ndarray:
        """Vectors (len(texts), dim) as float32, in input order."""

    def always_normalizes(self) -> bool:
        """True when the model itself L2-normalises (a Normalize layer): normalize=false cannot undo it."""
        return False


TermWeights = dict[str, float]  # a sparse vector: vocabulary term -> weight > 0


class SparseProvider(Provider):
    """Turns texts into term weights for one sparse namespace (SPLADE expansions, BM25 query terms)."""

    # False: the store indexes the document text itself (BM25 in Lucene) and document terms are not computed.
    encodes_documents = True

    @abstractmethod
    def encode(self, texts: Sequence[str], *, query: bool) -> list[TermWeights]:
        """Term weights per text, in input order: every weight finite and > 0, at most the side's top_k_terms."""


class RerankProvider(Provider):
    """Scores (query, document) pairs for one reranker namespace: a cross-encoder, in process or on a server."""

    @abstractmethod
    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Relevance of each document to the query, float32 (len(documents),), in input order; higher is better.

        Each pair is cut to the namespace's max_tokens, never refused: a long document is still ranked, on its start.
        """


def resolve_local_path(spec: str) -> Path:
    """A folder named by `package:NAME/sub/path` (inside an installed package) or a filesystem path."""
    if spec.startswith("package:"):
        package, _, sub = spec.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise BackendUnavailable(
                f"Python package {package!r} is not installed (needed by {spec!r}; {install_hint(package)}).",
                details={"package": package},
            )
        return Path(next(iter(found.submodule_search_locations))) / sub
    return Path(os.path.expanduser(spec))


def expand_environment(value: str) -> str:
    """Replace ${VAR} with the variable's value ('' when unset)."""
    return _ENV_REFERENCE.sub(lambda match: os.environ.get(match[1], ""), value)


def unset_environment_references(value: str) -> list[str]:
    """The variables that `value` references as ${VAR} and that are unset or empty."""
    return [name for name in _ENV_REFERENCE.findall(value) if not os.environ.get(name)]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
