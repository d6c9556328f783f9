"""BM25 "encoder": a text's Lucene-analysed term frequencies, with the analyzer the Lucene index uses.

BM25 has no model: the Lucene store (embeddings.stores.lucene) indexes document text itself, so documents are
never encoded (encodes_documents = False). encode() serves /v1/embed and shows which terms a query matches:
Anserini's default English analyzer (Porter stemming, Lucene's English stopwords), as in the index.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from core.errors import BackendError
from embeddings.providers.base import Readiness, SparseProvider, TermWeights
from embeddings.stores.pyserini_runtime import english_analyzer, java_error, jvm_status, pyserini_module


class Bm25Provider(SparseProvider):
    encodes_documents = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._analyzer: Any = None  # pyserini.analysis.Analyzer, built on first use (starts the JVM)
        self._lock = threading.Lock()

    def _analyzer_get(self) -> Any:
        with self._lock:
            if self._analyzer is None:
                analysis = pyserini_module("pyserini.analysis")
                self._analyzer = analysis.Analyzer(english_analyzer())  # Pyserini's Python wrapper around it
            return self._analyzer

    def encode(self, texts: Sequence[str], *, query: bool) -> list[TermWeights]:
        """Term frequencies of each text after analysis; a text of stopwords only gives {}."""
        analyzer = self._analyzer_get()
        encoded: list[TermWeights] = []
        for text in texts:
            try:
                tokens = analyzer.analyze(text)  # Lucene analyzers are thread-safe (per-thread token streams)
            except Exception as error:  # jnius.JavaException: never leak a client library's exception
                raise BackendError(
                    f"Lucene could not analyse a text for {self.config.namespace}: {java_error(error)}",
                    details={"namespace": self.config.namespace},
                ) from error
            encoded.append({term: float(count) for term, count in Counter(tokens).items()})
        return encoded

    def readiness(self) -> Readiness:
        ready, detail = jvm_status()  # never starts the JVM: /health may run where a fork is still to come
        return Readiness(ready, detail)
