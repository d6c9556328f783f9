"""In-process reranker: sentence-transformers' CrossEncoder over weights in a local folder (or `package:` path).

The model instance and its lock are the in-process embedder's (one per folder, device and max length per process):
one forward pass at a time, as on a CPU two passes only fight over the same cores. A pair longer than the
namespace's max_tokens is cut by the tokenizer (longest text first), so a long document is scored on its start.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import BackendError, BackendUnavailable
from embeddings.providers.base import ProviderConfig, Readiness, RerankProvider, resolve_local_path
from embeddings.providers.sentence_transformers import model_device, model_load, model_readiness


class CrossEncoderProvider(RerankProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        if not config.model_path:
            raise BackendUnavailable(f"Namespace {config.namespace} has no model_path.")
        self._loaded: tuple[Any, threading.Lock] | None = None  # a failed load is not kept: the next call retries

    def _model(self) -> tuple[Any, threading.Lock]:
        if self._loaded is None:
            path = str(resolve_local_path(self.config.model_path))
            self._loaded = model_load(path, model_device(self.config), self.config.max_tokens, "CrossEncoder")
        return self._loaded

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        model, lock = self._model()
        pairs = [(query, document) for document in documents]
        with lock:
            scores = model.predict(
                pairs, batch_size=self.config.batch_size, show_progress_bar=False, convert_to_numpy=True
            )
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 1:  # a model with several labels has no single relevance score
            raise BackendError(
                f"Namespace {self.config.namespace}'s model answers {scores.shape[1:]} scores per pair, not one.",
                details={"namespace": self.config.namespace},
            )
        return scores

    def readiness(self) -> Readiness:
        return model_readiness(self._model)
