"""Pyserini impact search (a Lucene impact index of SPLADE term weights): the reference of bench/sparse_search.py.

Lucene impact indexes keep a term's weight as its integer frequency, so weights are quantised here with
pyserini.yaml's impact.quantization_scale (w * scale, rounded; 0 dropped) on both sides: the Lucene score is then
the exact dot product of the quantised vectors, and score / scale² approximates the float dot product.
The index is built by Anserini's own IndexCollection (JsonVectorCollection, -impact -pretokenized) in a Java
subprocess; searches go through Pyserini's LuceneImpactSearcher with the query given as {term: weight}.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.errors import BackendError
from embeddings.stores.pyserini_runtime import anserini_run, java_error, pyserini_module
from namespaces.config import pyserini_config


def impact_quantize(weights: Mapping[str, float], *, scale: int) -> dict[str, int]:
    """Integer impacts: each weight * scale, rounded; terms that round to 0 are dropped."""
    quantized = {term: round(float(weight) * scale) for term, weight in weights.items()}
    return {term: impact for term, impact in quantized.items() if impact > 0}


def _scale(scale: int | None) -> int:
    return int(scale or pyserini_config().impact.quantization_scale)


def impact_index_build(
    *,
    documents: Iterable[tuple[str, Mapping[str, float]]],
    index_dir: Path,
    scale: int | None = None,
    threads: int = 1,
) -> int:
    """Build a Lucene impact index at `index_dir` from (docid, {term: weight}) pairs; returns documents written.

    Documents whose weights all quantise to 0 are skipped (Anserini refuses empty documents).
    """
    scale = _scale(scale)
    written = 0
    with tempfile.TemporaryDirectory(prefix="impact-collection-") as collection:
        with open(Path(collection) / "documents.jsonl", "w", encoding="utf-8") as out:
            for docid, weights in documents:
                vector = impact_quantize(weights, scale=scale)
                if not vector:
                    continue
                out.write(json.dumps({"id": str(docid), "contents": "", "vector": vector}) + "\n")
                written += 1
        anserini_run(
            "io.anserini.index.IndexCollection",
            [
                "-collection", "JsonVectorCollection",
                "-input", collection,
                "-index", str(index_dir),
                "-generator", "DefaultLuceneDocumentGenerator",
                "-threads", str(max(1, threads)),
                "-impact",
                "-pretokenized",
            ],
        )  # fmt: skip
    return written


class _GivenWeights:
    """A Pyserini query encoder for queries that are already {term: integer impact}."""

    def encode(self, query: dict[str, int]) -> dict[str, int]:
        return query


class PyseriniImpactSearcher:
    """LuceneImpactSearcher over an impact index, queried with {term: weight}; thread-safe (one lock)."""

    def __init__(self, index_dir: Path, *, scale: int | None = None) -> None:
        self.scale = _scale(scale)
        lucene = pyserini_module("pyserini.search.lucene")
        try:
            # min_idf=-1: keep every query term the index knows (the default 0 drops terms present in every document).
            self._searcher: Any = lucene.LuceneImpactSearcher(str(index_dir), query_encoder=_GivenWeights(), min_idf=-1)
        except Exception as error:  # jnius.JavaException
            raise BackendError(f"Pyserini cannot open the impact index {index_dir}: {java_error(error)}") from error
        self._lock = threading.Lock()  # a Pyserini searcher shared by threads returned wrong scores

    def search(self, query: Mapping[str, float], k: int) -> list[tuple[str, float]]:
        """(docid, score / scale²) of the k best documents, best first (ties by docid, as Anserini orders them)."""
        impacts = impact_quantize(query, scale=self.scale)
        if not impacts or k <= 0:
            return []
        with self._lock:
            try:
                hits = self._searcher.search(impacts, k=k)
            except Exception as error:  # jnius.JavaException
                raise BackendError(f"Pyserini impact search failed: {java_error(error)}") from error
            return [(str(hit.docid), float(hit.score) / self.scale**2) for hit in hits]

    @property
    def documents(self) -> int:
        return int(self._searcher.num_docs)

    def close(self) -> None:
        with self._lock:
            self._searcher.close()
