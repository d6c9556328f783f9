"""Token counting with the namespace's own tokenizer (transformers.AutoTokenizer, local files only)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from core.errors import TokenizerUnavailable
from embeddings.providers.base import Tokenized, resolve_local_path


class _ThreadTokenizers:
    """One copy of the tokenizer per thread: a fast tokenizer is not safe to call from several threads at once
    ('Already borrowed'), and one shared behind a lock made every request wait for the longest text of any tenant
    (256 texts of 1,600 words take about a second to count). The Rust tokenizer runs without the GIL, so the
    copies count side by side."""

    def __init__(self, tokenizer: Any) -> None:
        self._original = tokenizer
        self._copy_lock = threading.Lock()
        self._local = threading.local()

    def _tokenizer(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            with self._copy_lock:  # the original is only read here, never called
                tokenizer = self._local.tokenizer = copy.deepcopy(self._original)
        return tokenizer

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self._tokenizer()(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        tokenizer = self._tokenizer()
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [
            Tokenized(ids=list(ids), tokens=list(tokenizer.convert_ids_to_tokens(ids))) for ids in encoded["input_ids"]
        ]


@lru_cache(maxsize=32)
def _load(spec: str) -> _ThreadTokenizers:
    from transformers import AutoTokenizer

    path = resolve_local_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as error:
        raise TokenizerUnavailable(
            f"Tokenizer {spec!r} cannot be loaded from local files.", details={"tokenizer": spec}
        ) from error
    return _ThreadTokenizers(tokenizer)


# Characters of a text counted when only "more than at_most tokens?" matters: at_most x this, cut at a space. Real
# text runs 3.5-6 characters per token (SciFact, MiniLM); a prefix that holds at_most tokens or fewer is
# rare (very long tokens) and then the whole text is counted.
_PREFIX_CHARACTERS_PER_TOKEN = 8


def local_tokenize(*, tokenizer: str, texts: Sequence[str]) -> list[Tokenized]:
    """Each text's token ids and strings from a local tokenizer, special tokens included, untruncated."""
    if not tokenizer:
        raise TokenizerUnavailable("This namespace has no local tokenizer configured.")
    return _load(tokenizer).tokenize(texts)


def token_counts(*, tokenizer: str, texts: Sequence[str], at_most: int | None = None) -> list[int]:
    """Tokens per text, special tokens included, before any truncation.

    With `at_most`, a count above it may be a lower bound (still above it): a text far longer than the budget is
    counted on a prefix cut at whitespace (which ends a token in the tokenizers medkg serves), so what a
    truncated text costs to check does not grow with the text.
    """
    if not tokenizer:
        raise TokenizerUnavailable("This namespace has no local tokenizer configured.")
    counter = _load(tokenizer)
    if at_most is None:
        return counter.count(texts)
    limit = at_most * _PREFIX_CHARACTERS_PER_TOKEN
    cut = [text if len(text) <= limit else text[: max(text.rfind(" ", 0, limit), 1)] for text in texts]
    counts = counter.count(cut)
    recount = [index for index, count in enumerate(counts) if cut[index] is not texts[index] and count <= at_most]
    if recount:
        for index, count in zip(recount, counter.count([texts[index] for index in recount]), strict=True):
            counts[index] = count
    return counts
