"""Rank fusion for hybrid search: reciprocal-rank fusion and min-max weighted score fusion.

Inputs are rankings per namespace (document id, score), best first. Pure functions: no I/O, easy to check by hand.

- RRF (Cormack et al. 2009): fused(d) = sum over namespaces of weight / (k + rank(d)), rank from 1, k = 60.
  Scores of different spaces are never compared, only ranks: robust when BM25 scores (unbounded) meet cosines.
- Min-max: each namespace's scores are rescaled to [0, 1] over its own candidates ((s - min) / (max - min); all
  equal -> 1), then fused(d) = sum of weight x rescaled score; a namespace that did not return d adds 0.
Ties are broken by document id so that pages are stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

RRF_K = 60
FusionMethod = Literal["rrf", "minmax"]


@dataclass(frozen=True)
class SourceHit:
    rank: int  # 1-based rank in that namespace's list
    score: float  # that namespace's own score


@dataclass(frozen=True)
class FusedHit:
    id: str
    score: float
    sources: dict[str, SourceHit] = field(default_factory=dict)  # namespace -> where it came from


Ranking = Sequence[tuple[str, float]]  # (document id, score), best first


def _sources(rankings: Mapping[str, Ranking]) -> dict[str, dict[str, SourceHit]]:
    found: dict[str, dict[str, SourceHit]] = {}
    for namespace, ranking in rankings.items():
        seen: set[str] = set()
        for rank, (document, score) in enumerate(ranking, start=1):
            if document in seen:  # a list with a document twice: its best rank counts
                continue
            seen.add(document)
            found.setdefault(document, {})[namespace] = SourceHit(rank=rank, score=score)
    return found


def _sorted(scores: dict[str, float], sources: dict[str, dict[str, SourceHit]]) -> list[FusedHit]:
    order = sorted(scores, key=lambda document: (-scores[document], document))
    return [FusedHit(id=document, score=scores[document], sources=sources[document]) for document in order]


def fuse_rrf(rankings: Mapping[str, Ranking], weights: Mapping[str, float], *, k: int = RRF_K) -> list[FusedHit]:
    sources = _sources(rankings)
    scores = {
        document: sum(weights.get(namespace, 1.0) / (k + hit.rank) for namespace, hit in hits.items())
        for document, hits in sources.items()
    }
    return _sorted(scores, sources)


def fuse_minmax(rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[FusedHit]:
    sources = _sources(rankings)
    bounds = {}
    for namespace, ranking in rankings.items():
        values = [score for _, score in ranking]
        if values:
            bounds[namespace] = (min(values), max(values))

    def rescaled(namespace: str, score: float) -> float:
        low, high = bounds[namespace]
        return 1.0 if high == low else (score - low) / (high - low)

    scores = {
        document: sum(weights.get(namespace, 1.0) * rescaled(namespace, hit.score) for namespace, hit in hits.items())
        for document, hits in sources.items()
    }
    return _sorted(scores, sources)


def fuse(
    rankings: Mapping[str, Ranking], weights: Mapping[str, float], *, method: FusionMethod, rrf_k: int = RRF_K
) -> list[FusedHit]:
    if method == "rrf":
        return fuse_rrf(rankings, weights, k=rrf_k)
    return fuse_minmax(rankings, weights)
