"""Client of an OpenAI-compatible embeddings server (vLLM's `vllm serve --task embed`, or another medkg).

Timeouts are short and explicit; every transport failure is BackendUnavailable (503), every
unusable answer BackendError (502) and a vector of the wrong size DimensionMismatch.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from django.conf import settings

from core.errors import BackendError, BackendUnavailable, DimensionMismatch, GpuUnavailable, TokenizerUnavailable
from embeddings.providers.base import (
    EmbeddingProvider,
    ProviderConfig,
    Readiness,
    Tokenized,
    expand_environment,
    l2_normalize,
    unset_environment_references,
)
from embeddings.providers.batching import BatchingLimits, DynamicBatcher, batcher_for

_HEALTH_CACHE_SECONDS = 5.0
_TOKENIZE_CONCURRENCY = 8  # vLLM's /tokenize takes one prompt per request: a batch goes out side by side
_NO_TOKENIZER_SECONDS = 60.0  # a backend without /tokenize (TEI, Infinity, another medkg) is asked again after this


class VllmHttpProvider(EmbeddingProvider):
    tokenizes = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        timeout = float(config.parameter("timeout_seconds", settings.MEDKG_PROVIDER_TIMEOUT_SECONDS))
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(2.0, timeout)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self._health: tuple[float, Readiness] | None = None
        self._health_lock = threading.Lock()
        self._tokenize_pool = ThreadPoolExecutor(_TOKENIZE_CONCURRENCY, thread_name_prefix="medkg-tokenize")
        self._no_tokenizer_until = 0.0

    # --- configuration -------------------------------------------------------------------
    def _unavailable(self, message: str, details: dict[str, Any]) -> BackendUnavailable:
        """A GPU namespace's server is where its GPU is: when it is missing or unreachable, so is the GPU."""
        error_class = GpuUnavailable if self.config.requires_gpu else BackendUnavailable
        return error_class(message, details=details)

    def base_url(self) -> str:
        unset = unset_environment_references(self.config.endpoint)
        if unset:
            raise self._unavailable(
                f"Namespace {self.config.namespace} has no endpoint: set {', '.join(unset)} "
                f"(its endpoint is {self.config.endpoint}).",
                details={"namespace": self.config.namespace, "unset_variables": unset},
            )
        url = expand_environment(self.config.endpoint).rstrip("/")
        if not url:
            raise self._unavailable(
                f"Namespace {self.config.namespace} has no endpoint: set VLLM_URL (or the namespace's endpoint).",
                details={"namespace": self.config.namespace},
            )
        return url.removesuffix("/v1")

    def _headers(self) -> dict[str, str]:
        key_variable = self.config.parameter("api_key_env")
        api_key = os.environ.get(key_variable, "") if key_variable else settings.VLLM_API_KEY
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _served_model(self) -> str:
        return str(self.config.parameter("served_model_name") or self.config.model_id)

    # --- embedding -----------------------------------------------------------------------
    def embed(self, texts: Sequence[str], *, normalize: bool, truncate: bool) -> np.ndarray:
        url = f"{self.base_url()}/v1/embeddings"
        concurrency = int(self.config.parameter("max_concurrency", settings.MEDKG_REMOTE_MAX_CONCURRENCY))
        if concurrency > 0 and texts:
            vectors = self._scheduler(url, truncate, concurrency).submit(
                texts, timeout=settings.MEDKG_PROVIDER_TIMEOUT_SECONDS
            )
        else:
            vectors = self._embed_all(url, list(texts), truncate)
        return l2_normalize(vectors) if normalize else vectors

    def _embed_all(self, url: str, texts: list[str], truncate: bool) -> np.ndarray:
        step = self.config.batch_size
        parts = [self._embed_batch(url, texts[i : i + step], truncate) for i in range(0, len(texts), step)]
        return np.vstack(parts) if parts else np.zeros((0, self.config.dim or 0), dtype=np.float32)

    def _scheduler(self, url: str, truncate: bool, concurrency: int) -> DynamicBatcher:
        """The model scheduler in front of the backend: at most `concurrency` requests in flight from this process,
        each formed interactive-first and fair between tenants (embeddings/providers/batching.py), so one tenant's
        bulk cannot fill the backend's queue ahead of another's single text."""
        limits = BatchingLimits(
            max_batch_size=self.config.batch_size,
            max_wait_time_ms=0.0,  # the backend batches what is in flight itself: nothing to wait for here
            max_pass_tokens=int(self.config.parameter("max_pass_tokens", settings.MEDKG_REMOTE_MAX_PASS_TOKENS)),
            max_text_tokens=self.config.max_tokens,
            bulk_share=settings.MEDKG_SCHEDULER_BULK_SHARE,
        )
        key = ("remote", self.config, url, truncate, concurrency)
        return batcher_for(
            key,
            name=self.config.namespace,
            encode=lambda batch: self._embed_all(url, batch, truncate),
            limits=limits,
            workers=concurrency,
        )

    def _embed_batch(self, url: str, texts: list[str], truncate: bool) -> np.ndarray:
        body: dict[str, Any] = {"model": self._served_model(), "input": texts, "encoding_format": "float"}
        if truncate:
            body["truncate_prompt_tokens"] = self.config.max_tokens
        return self._parse(self.post_json(url, body), len(texts))

    def post_json(self, url: str, body: dict[str, Any], *, role: str = "Embedding") -> httpx.Response:
        """The backend's answer to `body` (also for the reranker client on the same server): transport failures and
        overload 503, refusals 502; `role` names the backend in the message."""
        try:
            response = self._client.post(url, json=body, headers=self._headers())
        except httpx.TimeoutException as error:
            raise BackendUnavailable(f"{role} backend timed out: {url}", details={"backend": url}) from error
        except httpx.HTTPError as error:
            raise self._unavailable(
                f"{role} backend unreachable: {url} ({type(error).__name__})", details={"backend": url}
            ) from error
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise BackendUnavailable(f"{role} backend answered {response.status_code}.", details={"backend": url})
        if response.status_code >= 400:
            raise BackendError(
                f"{role} backend refused the request ({response.status_code}).",
                details={"backend": url, "backend_status": response.status_code, "backend_body": response.text[:500]},
            )
        return response

    # --- tokenization (vLLM's POST /tokenize: the served model's own tokenizer) ----------
    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        url = f"{self.base_url()}/tokenize"
        if time.monotonic() < self._no_tokenizer_until:
            raise self._no_tokenizer(url)
        try:
            return list(self._tokenize_pool.map(lambda text: self._tokenize_one(url, text), texts))
        except BackendError as error:
            if error.details.get("backend_status") not in (404, 405):
                raise
            # An OpenAI-compatible server that is not vLLM: no tokenizer to count with, as without a local one.
            self._no_tokenizer_until = time.monotonic() + _NO_TOKENIZER_SECONDS
            raise self._no_tokenizer(url) from error

    def _no_tokenizer(self, url: str) -> TokenizerUnavailable:
        return TokenizerUnavailable(
            f"Namespace {self.config.namespace} has no local tokenizer and its backend serves no /tokenize.",
            details={"namespace": self.config.namespace, "backend": url},
        )

    def _tokenize_one(self, url: str, text: str) -> Tokenized:
        body = {"model": self._served_model(), "prompt": text, "add_special_tokens": True, "return_token_strs": True}
        response = self.post_json(url, body)
        try:
            answer = response.json()
            ids = [int(token) for token in answer["tokens"]]
            strings = answer.get("token_strs") or []
            tokens = [str(token) for token in strings] if len(strings) == len(ids) else [""] * len(ids)
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(f"Tokenizer backend sent an unreadable answer: {error}") from error
        return Tokenized(ids=ids, tokens=tokens)

    def _parse(self, response: httpx.Response, expected: int) -> np.ndarray:
        try:
            items = sorted(response.json()["data"], key=lambda item: item["index"])
            rows = [_decode_vector(item["embedding"]) for item in items]
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(f"Embedding backend sent an unreadable answer: {error}") from error
        if len(rows) != expected:
            raise BackendError(f"Embedding backend returned {len(rows)} vectors for {expected} texts.")
        dims = {row.shape[0] for row in rows}
        if self.config.dim is not None and dims != {self.config.dim}:
            raise DimensionMismatch(
                f"Backend returned vectors of dimension {sorted(dims)} for namespace "
                f"{self.config.namespace} (dimension {self.config.dim}).",
                details={"expected": self.config.dim, "received": sorted(dims)},
            )
        return np.vstack(rows).astype(np.float32, copy=False)

    # --- health --------------------------------------------------------------------------
    def readiness(self) -> Readiness:
        with self._health_lock:
            if self._health and time.monotonic() - self._health[0] < _HEALTH_CACHE_SECONDS:
                return self._health[1]
            readiness = self._probe()
            self._health = (time.monotonic(), readiness)
            return readiness

    def _probe(self) -> Readiness:
        try:
            url = f"{self.base_url()}/health"
        except BackendUnavailable as error:
            return Readiness(False, error.message)
        try:
            response = self._client.get(url, timeout=2.0)
        except httpx.HTTPError as error:
            return Readiness(False, f"{url} unreachable ({type(error).__name__})")
        if response.status_code != 200:
            return Readiness(False, f"{url} answered {response.status_code}")
        return Readiness(True, f"{url} answered 200")


def _decode_vector(raw: Any) -> np.ndarray:
    if isinstance(raw, str):  # encoding_format=base64: little-endian float32
        return np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float32)
    if not isinstance(raw, list) or not raw:
        raise ValueError("embedding is not a non-empty list")
    vector = np.asarray(raw, dtype=np.float32)
    if vector.ndim != 1 or not np.all(np.isfinite(vector)):
        raise ValueError("embedding is not a finite 1-d vector")
    return vector
