"""Forward passes of similar token length for an in-process sentence-transformers model.

`SentenceTransformer.encode` sorts a batch by character count and tokenizes each pass on its own. For
medical text, characters are a poor proxy for tokens (a drug name is one word and five word pieces): on
the bench's short texts, passes of 32 sorted by characters still pad 30 % more tokens than the texts hold,
against 9 % when sorted by tokens, and padding is computed like any other token. Here the whole batch is
tokenized once, sorted by its real token counts, cut into passes of at most `batch_size` texts and each
pass padded only to its own longest text; the model's own modules (transformer, pooling, normalize) then
run as in encode. Where the passes are cut is chosen to compute the fewest tokens, counting each pass's
fixed cost as PASS_OVERHEAD_TOKENS: one 300-token text among short ones gets a pass of its own instead of
padding 31 others to 300 tokens.

Only plain text models qualify (`SortedEncoder.probe`): the same features as the model's own
`preprocess` and the same vectors as its `encode` on probe texts, checked once at load; any other model
keeps `encode`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.logging import log_event

logger = logging.getLogger("medkg.embeddings")

_FEATURES = {"input_ids", "attention_mask", "token_type_ids", "modality"}
_PROBE_TEXTS = [
    "Aspirin irreversibly inhibits cyclooxygenase-1 in platelets.",
    "CKD",
    "Metformin lowers hepatic glucose output and is first-line therapy in type 2 diabetes mellitus.",
]
_PROBE_TOLERANCE = 1e-5
# A pass's fixed cost in tokens of compute. MiniLM on 2 CPU cores: about 20 ms for a 1 x 8-token pass
# against 0.25-0.3 ms per token in large passes (measured for issue 7's closing note).
PASS_OVERHEAD_TOKENS = 64


def passes_cut(lengths: Sequence[int], batch_size: int, overhead: int = PASS_OVERHEAD_TOKENS) -> list[int]:
    """Where to cut `lengths` (sorted ascending) into passes of at most `batch_size`: the pass end indices.

    Minimises the tokens computed, sum over passes of (texts x longest text + overhead): dynamic programming
    over the sorted order, where every pass is a contiguous run (any other grouping pads more).
    """
    count = len(lengths)
    best = np.zeros(count + 1)
    cut_from = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        starts = np.arange(max(0, end - batch_size), end)
        costs = best[starts] + lengths[end - 1] * (end - starts) + overhead
        choice = int(np.argmin(costs))
        best[end], cut_from[end] = costs[choice], starts[choice]
    ends: list[int] = []
    end = count
    while end > 0:
        ends.append(end)
        end = int(cut_from[end])
    return ends[::-1]


class SortedEncoder:
    """Encodes texts in passes sorted by token count with `model`'s tokenizer and modules."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.keys = set(model.preprocess(["probe"]))

    @classmethod
    def probe(cls, model: Any) -> SortedEncoder | None:
        """A SortedEncoder when it reproduces `model.encode` exactly; None (encode is used) otherwise."""
        try:
            if getattr(model.tokenizer, "padding_side", "right") != "right" or model.tokenizer.pad_token_id is None:
                return None
            encoder = cls(model)
            if not encoder.keys <= _FEATURES or "input_ids" not in encoder.keys:
                return None
            expected = np.asarray(model.encode(_PROBE_TEXTS, batch_size=2, convert_to_numpy=True), dtype=np.float32)
            got = encoder.encode(_PROBE_TEXTS, batch_size=2, normalize=False)
            difference = float(np.abs(expected - got).max())
        except Exception as error:  # noqa: BLE001 - any surprise means: keep the model's own encode
            log_event(logger, "sorted_encode_unavailable", reason=f"{type(error).__name__}: {error}"[:300])
            return None
        if difference > _PROBE_TOLERANCE:
            log_event(logger, "sorted_encode_unavailable", reason=f"differs from encode by {difference:.2e}")
            return None
        return encoder

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: Sequence[str], *, batch_size: int, normalize: bool) -> np.ndarray:
        import torch

        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        vectors: np.ndarray | None = None
        start = 0
        with torch.inference_mode():
            for end in passes_cut([len(ids[index]) for index in order], batch_size):
                rows, start = order[start:end], end
                embeddings = self.model(self._features(ids, rows))["sentence_embedding"]
                if normalize:
                    embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
                chunk = embeddings.float().cpu().numpy()
                if vectors is None:
                    vectors = np.empty((len(ids), chunk.shape[1]), dtype=np.float32)
                vectors[rows] = chunk
        return vectors if vectors is not None else np.empty((0, 0), dtype=np.float32)

    def _features(self, ids: list[list[int]], rows: list[int]) -> dict[str, Any]:
        import torch

        width = max(len(ids[row]) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for position, row in enumerate(rows):
            length = len(ids[row])
            input_ids[position, :length] = ids[row]
            attention[position, :length] = 1
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
        }
        if "token_type_ids" in self.keys:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        if "modality" in self.keys:
            features["modality"] = "text"
        device = self.model.device
        return {key: value.to(device) if hasattr(value, "to") else value for key, value in features.items()}
