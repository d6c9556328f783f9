"""In-process sentence-transformers provider: the embedded default and the rollback target.

One model instance per (folder, device, max length) per process, loaded on first use.
Forward passes are serialised by a lock: on a CPU, two concurrent passes only fight over
the same cores, while one pass at a time keeps throughput at the raw model's. With dynamic batching
(MEDKG_DYNAMIC_BATCHING, on by default) concurrent requests share one pass (embeddings/providers/batching.py).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import BackendUnavailable, GpuUnavailable
from embeddings.providers.base import EmbeddingProvider, ProviderConfig, Readiness, resolve_local_path
from embeddings.providers.batching import BatchingLimits, batcher_for, batching_enabled, default_limits
from embeddings.providers.sorted_encode import SortedEncoder

_models: dict[tuple[str, str, int, str], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def model_load(
    path: str, device: str, max_seq_length: int, model_class: str = "SentenceTransformer"
) -> tuple[Any, threading.Lock]:
    """The process's one instance of the model (`model_class`: SentenceTransformer or SparseEncoder) and its lock."""
    key = (path, device, max_seq_length, model_class)
    with _models_lock:
        if key not in _models:
            import sentence_transformers
            import torch
            from django.conf import settings

            if settings.MEDKG_TORCH_THREADS:
                torch.set_num_threads(settings.MEDKG_TORCH_THREADS)

            try:
                model = getattr(sentence_transformers, model_class)(path, device=device, local_files_only=True)
            except (OSError, ValueError) as error:
                raise BackendUnavailable(
                    f"Model folder {path!r} cannot be loaded: {error}", details={"model_path": path}
                ) from error
            model.max_seq_length = min(max_seq_length, model.max_seq_length or max_seq_length)
            model.eval()
            _models[key] = (model, threading.Lock())
        return _models[key]


def model_readiness(load: Callable[[], tuple[Any, ...]]) -> Readiness:
    """Ready once `load` (a provider's model loader) has the model in memory; not ready, with the reason, otherwise."""
    try:
        model = load()[0]
    except (BackendUnavailable, GpuUnavailable) as error:
        return Readiness(False, error.message)
    return Readiness(True, f"loaded on {model.device}")


_sorted_encoders: dict[int, SortedEncoder | None] = {}


def _sorted_encoder(model: Any) -> SortedEncoder | None:
    """The model's token-sorted encoder (embeddings/providers/sorted_encode.py), probed once per model; None: encode."""
    from django.conf import settings

    if not settings.MEDKG_TOKEN_SORTED_PASSES:
        return None
    if id(model) not in _sorted_encoders:
        _sorted_encoders[id(model)] = SortedEncoder.probe(model)
    return _sorted_encoders[id(model)]


def model_device(config: ProviderConfig) -> str:
    """cuda when required, asked for or present; cpu otherwise. GpuUnavailable when required and missing."""
    wanted = config.parameter("device")
    if config.requires_gpu or wanted == "cuda":
        if not _cuda_available():
            raise GpuUnavailable(
                f"Namespace {config.namespace} requires a GPU and none is available.",
                details={"namespace": config.namespace},
            )
        return "cuda"
    return str(wanted or ("cuda" if _cuda_available() else "cpu"))


class SentenceTransformersProvider(EmbeddingProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        if not config.model_path:
            raise BackendUnavailable(f"Namespace {config.namespace} has no model_path.")
        # Resolved once: the path lookup, device probe and module scan stay off the request path.
        # A failed load is not kept, so the next request retries it.
        self._loaded: tuple[Any, threading.Lock, bool, SortedEncoder | None] | None = None

    def _device(self) -> str:
        return model_device(self.config)

    def _model(self) -> tuple[Any, threading.Lock, bool, SortedEncoder | None]:
        if self._loaded is None:
            from sentence_transformers.models import Normalize

            path = str(resolve_local_path(self.config.model_path))
            model, lock = model_load(path, self._device(), self.config.max_tokens)
            with lock:  # the probe runs the model
                sorted_encoder = _sorted_encoder(model)
            normalizes = any(isinstance(module, Normalize) for module in model)
            self._loaded = (model, lock, normalizes, sorted_encoder)
        return self._loaded

    def embed(self, texts: Sequence[str], *, normalize: bool, truncate: bool) -> np.ndarray:
        # Truncation to max_tokens is what the model does anyway (max_seq_length); the service
        # refuses over-budget texts before we get here unless the caller asked for truncation.
        model, lock, _, _ = self._model()
        if not batching_enabled():
            return self._encode(model, lock, list(texts), normalize=normalize)
        from django.conf import settings

        key = (id(model), normalize, self.config.batch_size)
        batcher = batcher_for(
            key,
            name=self.config.model_id.rpartition("/")[2] or "model",
            encode=lambda batch: self._encode(model, lock, batch, normalize=normalize),
            limits=self._limits(),
        )
        return batcher.submit(texts, timeout=settings.MEDKG_PROVIDER_TIMEOUT_SECONDS)

    def _encode(self, model: Any, lock: threading.Lock, texts: list[str], *, normalize: bool) -> np.ndarray:
        sorted_encoder = self._model()[3]
        if sorted_encoder is not None:
            with lock:
                return sorted_encoder.encode(texts, batch_size=self.config.batch_size, normalize=normalize)
        with lock:
            vectors = model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _limits(self) -> BatchingLimits:
        """vllm.yaml's batching section; a namespace's parameters may override either knob."""
        defaults = default_limits()
        return dataclasses.replace(
            defaults,
            max_batch_size=int(self.config.parameter("max_batch_size", defaults.max_batch_size)),
            max_wait_time_ms=float(self.config.parameter("max_wait_time_ms", defaults.max_wait_time_ms)),
            max_pass_tokens=int(self.config.parameter("max_pass_tokens", defaults.max_pass_tokens)),
            max_text_tokens=self.config.max_tokens,
        )

    def always_normalizes(self) -> bool:
        return self._model()[2]

    def readiness(self) -> Readiness:
        return model_readiness(self._model)
