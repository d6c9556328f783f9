"""Rank fusion by hand: every expected number below is worked out in the comments, not taken from the code."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embeddings.fusion import fuse, fuse_minmax, fuse_rrf

DENSE = [("d1", 0.91), ("d2", 0.85), ("d3", 0.60)]
SPARSE = [("d3", 14.0), ("d1", 9.0), ("d4", 2.0)]


def test_rrf_with_k_60_by_hand() -> None:
    fused = fuse_rrf({"dense": DENSE, "sparse": SPARSE}, {"dense": 1.0, "sparse": 1.0}, k=60)
    # d1: 1/(60+1) + 1/(60+2) = 0.016393 + 0.016129 = 0.032522
    # d3: 1/(60+3) + 1/(60+1) = 0.015873 + 0.016393 = 0.032266
    # d2: 1/(60+2)            = 0.016129
    # d4: 1/(60+3)            = 0.015873
    assert [hit.id for hit in fused] == ["d1", "d3", "d2", "d4"]
    assert [round(hit.score, 6) for hit in fused] == [0.032522, 0.032266, 0.016129, 0.015873]
    assert fused[0].sources["dense"].rank == 1 and fused[0].sources["sparse"].rank == 2
    assert fused[0].sources["sparse"].score == 9.0
    assert set(fused[2].sources) == {"dense"}


def test_rrf_weights_and_k_change_the_order_by_hand() -> None:
    # sparse weighted 2: d3 = 1/63 + 2/61 = 0.015873 + 0.032787 = 0.048660; d1 = 1/61 + 2/62 = 0.048651
    fused = fuse_rrf({"dense": DENSE, "sparse": SPARSE}, {"dense": 1.0, "sparse": 2.0})
    assert [hit.id for hit in fused[:2]] == ["d3", "d1"]
    assert fused[0].score == pytest.approx(1 / 63 + 2 / 61) and fused[1].score == pytest.approx(1 / 61 + 2 / 62)
    # k = 1 sharpens the top: d1 = 1/2 + 1/3 = 0.8333, d3 = 1/4 + 1/2 = 0.75, d2 = 1/3, d4 = 1/4
    fused = fuse_rrf({"dense": DENSE, "sparse": SPARSE}, {"dense": 1.0, "sparse": 1.0}, k=1)
    assert [(hit.id, round(hit.score, 4)) for hit in fused] == [
        ("d1", 0.8333),
        ("d3", 0.75),
        ("d2", 0.3333),
        ("d4", 0.25),
    ]


def test_minmax_by_hand() -> None:
    fused = fuse_minmax({"dense": DENSE, "sparse": SPARSE}, {"dense": 0.5, "sparse": 1.0})
    # dense rescaled over [0.60, 0.91]: d1 1.0, d2 (0.85-0.60)/0.31 = 0.806452, d3 0.0
    # sparse rescaled over [2, 14]:      d3 1.0, d1 (9-2)/12 = 0.583333, d4 0.0
    # d1: 0.5*1.0 + 0.583333 = 1.083333; d3: 0 + 1.0 = 1.0; d2: 0.5*0.806452 = 0.403226; d4: 0
    assert [(hit.id, round(hit.score, 6)) for hit in fused] == [
        ("d1", 1.083333),
        ("d3", 1.0),
        ("d2", 0.403226),
        ("d4", 0.0),
    ]


def test_minmax_with_equal_scores_and_empty_lists() -> None:
    fused = fuse_minmax({"a": [("x", 3.0), ("y", 3.0)], "b": []}, {"a": 1.0, "b": 1.0})
    assert [(hit.id, hit.score) for hit in fused] == [("x", 1.0), ("y", 1.0)]  # all equal -> 1, ties by id
    assert fuse({"a": [], "b": []}, {"a": 1.0, "b": 1.0}, method="rrf") == []


def test_ties_break_by_id_and_duplicates_keep_their_best_rank() -> None:
    fused = fuse_rrf({"a": [("b", 1.0), ("a", 0.5)], "b": [("a", 1.0), ("b", 0.5), ("b", 0.1)]}, {"a": 1.0, "b": 1.0})
    # a: 1/62 + 1/61, b: 1/61 + 1/62: equal, so "a" first; b's second listing in list "b" is ignored
    assert [hit.id for hit in fused] == ["a", "b"] and fused[0].score == pytest.approx(fused[1].score)
    assert fused[1].sources["b"].rank == 2


@given(
    st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=2), unique=True, max_size=12),
    st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=2), unique=True, max_size=12),
)
def test_a_document_first_in_every_list_is_first_after_rrf(first: list[str], second: list[str]) -> None:
    rankings = {
        "x": [(doc, float(-i)) for i, doc in enumerate(first)],
        "y": [(doc, float(-i)) for i, doc in enumerate(second)],
    }
    fused = fuse_rrf(rankings, {"x": 1.0, "y": 1.0})
    assert {hit.id for hit in fused} == set(first) | set(second)
    assert all(a.score >= b.score for a, b in itertools.pairwise(fused))
    if first and second and first[0] == second[0]:
        assert fused[0].id == first[0]
