"""SPLADE in process: sentence-transformers' SparseEncoder (MLM head + max pooling over log(1 + ReLU)).

Each text becomes `{vocabulary term: weight}`. The expansion limits of config/embedding/pyserini.yaml apply per
side: at most `top_k_terms` terms (the heaviest), weights above `min_weight`, clipped to `opensearch.max_weight`
so that every store (embedded impact index, OpenSearch rank_features) holds the same numbers.
A namespace's parameters may override them: doc_top_k_terms, query_top_k_terms, max_weight.
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any

from core.errors import BackendUnavailable, GpuUnavailable
from embeddings.providers.base import (
    ProviderConfig,
    Readiness,
    SparseProvider,
    TermWeights,
    resolve_local_path,
)
from embeddings.providers.sentence_transformers import model_device, model_load
from namespaces.config import ExpansionSide, pyserini_config


def _max_pool_then_activate(module: Any, features: dict[str, Any]) -> dict[str, Any]:
    """SpladePooling's max pooling, exactly, with the activation after the max instead of before it.

    log(1 + ReLU(x)) is monotone, so max over tokens commutes with it; and a masked token's 0 never beats a real
    one's activation (which is >= 0). Pooling the raw logits first touches the (batch, tokens, vocabulary) tensor
    once instead of four times (mask, ReLU, log1p, max): SPLADE-tiny's forward pass is then about 2x faster,
    as most of it was this elementwise work on 30,522 logits per token.
    """
    import torch

    if "cu_seq_lens_q" in features or module.pooling_strategy != "max" or module.training:
        return type(module).forward(module, features)  # type: ignore[no-any-return]
    logits, mask = features["token_embeddings"], features["attention_mask"].bool()
    pooled = torch.stack([logits[row][mask[row]].amax(dim=0) for row in range(logits.shape[0])])
    pooled = pooled.relu_().log1p_()
    if module.activation_function == "log1p_relu":
        pooled = pooled.log1p_()
    if module.embedding_dimension is None:
        module.embedding_dimension = pooled.shape[1]
    features["sentence_embedding"] = pooled
    return features


def _speed_up_pooling(model: Any) -> None:
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    for module in model:
        if isinstance(module, SpladePooling) and "forward" not in vars(module):
            module.forward = types.MethodType(_max_pool_then_activate, module)  # type: ignore[method-assign]


class SpladeProvider(SparseProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._loaded: tuple[Any, Any] | None = None  # (model, lock); a failed load is retried next time

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            folder = self.config.model_path or pyserini_config().model.path
            path = resolve_local_path(folder)
            if not (path / "config.json").is_file():
                raise BackendUnavailable(
                    f"SPLADE model folder {str(path)!r} has no config.json (namespace {self.config.namespace}).",
                    details={"model_path": str(path)},
                )
            loaded = model_load(str(path), model_device(self.config), self.config.max_tokens, "SparseEncoder")
            _speed_up_pooling(loaded[0])
            self._loaded = loaded
        return self._loaded

    def limits(self, *, query: bool) -> tuple[int | None, float, float]:
        """(top_k_terms, min_weight, max_weight) of one side, namespace overrides first."""
        settings = pyserini_config()
        side: ExpansionSide = settings.expansion.query_side if query else settings.expansion.doc_side
        top_k = self.config.parameter("query_top_k_terms" if query else "doc_top_k_terms", side.top_k_terms)
        max_weight = float(self.config.parameter("max_weight", settings.opensearch.max_weight))
        return (int(top_k) if top_k else None), side.min_weight, max_weight

    def encode(self, texts: Sequence[str], *, query: bool) -> list[TermWeights]:
        if not texts:
            return []
        model, lock = self._model()
        top_k, min_weight, max_weight = self.limits(query=query)
        encode = model.encode_query if query else model.encode_document
        with lock:
            embeddings = encode(
                list(texts), batch_size=self.config.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
            decoded = model.decode(embeddings, top_k=top_k)
        if decoded and isinstance(decoded[0], tuple):  # one text decodes to a flat list
            decoded = [decoded]
        result: list[TermWeights] = []
        for pairs in decoded:
            weights: TermWeights = {}
            for term, weight in pairs:
                value = float(weight)
                if math.isfinite(value) and value > min_weight and value > 0:
                    weights[term] = min(value, max_weight)
            result.append(weights)
        return result

    def readiness(self) -> Readiness:
        try:
            model, _ = self._model()
        except (BackendUnavailable, GpuUnavailable) as error:
            return Readiness(False, error.message)
        return Readiness(True, f"SPLADE loaded on {model.device}")
