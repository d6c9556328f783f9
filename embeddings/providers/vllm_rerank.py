"""Client of vLLM's scoring API for a cross-encoder served on the GPU node (`vllm serve <reranker> --task score`).

Two of vLLM's protocols, picked by the namespace's `parameters.rerank_api`:
- `score` (default): POST {endpoint}/score {"model", "text_1": query, "text_2": [documents]} ->
  {"data": [{"index", "score"}]}
- `rerank` (Jina/Cohere shape): POST {endpoint}/rerank {"model", "query", "documents", "top_n"} ->
  {"results": [{"index", "relevance_score"}]}
Both ask the server to cut each pair to the namespace's max_tokens (`truncate_prompt_tokens`). Endpoint, API key,
health and errors are the embeddings client's (embeddings/providers/vllm_http.py): every transport failure is
BackendUnavailable (503), every unusable answer BackendError (502).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from core.errors import BackendError, BackendUnavailable
from embeddings.providers.base import ProviderConfig, Readiness, RerankProvider
from embeddings.providers.vllm_http import VllmHttpProvider

RERANK_APIS = {"score": ("/score", "data", "score"), "rerank": ("/rerank", "results", "relevance_score")}


class VllmRerankProvider(RerankProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._api = str(config.parameter("rerank_api", "score"))
        if self._api not in RERANK_APIS:
            raise BackendUnavailable(  # the operator's to fix in the namespace, not the caller's
                f"Namespace {config.namespace}: parameters.rerank_api {self._api!r} is not one of "
                f"{sorted(RERANK_APIS)}.",
                details={"namespace": config.namespace, "rerank_api": self._api},
            )
        # The embeddings client (same server) knows the endpoint (${VAR} references), the API key, /health and
        # how its answers map to errors.
        self._server = VllmHttpProvider(config)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        path, _, _ = RERANK_APIS[self._api]
        url = f"{self._server.base_url()}{path}"
        step = self.config.batch_size
        parts = [self._score_batch(url, query, list(documents[i : i + step])) for i in range(0, len(documents), step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        model = str(self.config.parameter("served_model_name") or self.config.model_id)
        if self._api == "score":
            body: dict[str, Any] = {"model": model, "text_1": query, "text_2": documents}
        else:  # every document's score: medkg sorts and cuts to top_n across batches itself
            body = {"model": model, "query": query, "documents": documents, "top_n": len(documents)}
        return {**body, "truncate_prompt_tokens": self.config.max_tokens}

    def _score_batch(self, url: str, query: str, documents: list[str]) -> np.ndarray:
        response = self._server.post_json(url, self._body(query, documents), role="Rerank")
        return self._parse(response, len(documents))

    def _parse(self, response: httpx.Response, expected: int) -> np.ndarray:
        _, items_key, score_key = RERANK_APIS[self._api]
        try:
            items = response.json()[items_key]
            scores = {int(item["index"]): float(item[score_key]) for item in items}
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(f"Rerank backend sent an unreadable answer: {error}") from error
        if sorted(scores) != list(range(expected)) or len(items) != expected:
            raise BackendError(f"Rerank backend scored {sorted(scores)[:10]} for documents 0..{expected - 1}.")
        values = np.asarray([scores[i] for i in range(expected)], dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise BackendError("Rerank backend sent a non-finite score.")
        return values

    def readiness(self) -> Readiness:
        return self._server.readiness()
