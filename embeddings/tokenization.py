"""Token counting with the namespace's own tokenizer (transformers.AutoTokenizer, local files only)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from core.errors import TokenizerUnavailable
from embeddings.providers.base import resolve_local_path


class _LockedTokenizer:
    """Fast tokenizers are not safe to call from several threads at once ('Already borrowed')."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def count(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            encoded = self._tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


@lru_cache(maxsize=32)
def _load(spec: str) -> _LockedTokenizer:
    from transformers import AutoTokenizer

    path = resolve_local_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as error:
        raise TokenizerUnavailable(
            f"Tokenizer {spec!r} cannot be loaded from local files.", details={"tokenizer": spec}
        ) from error
    return _LockedTokenizer(tokenizer)


def token_counts(*, tokenizer: str, texts: Sequence[str]) -> list[int]:
    """Tokens per text, special tokens included, before any truncation."""
    if not tokenizer:
        raise TokenizerUnavailable("This namespace has no local tokenizer configured.")
    return _load(tokenizer).count(texts)
