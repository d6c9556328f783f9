"""BM25 over a real Lucene index (Anserini through Pyserini): one index per (namespace, tenant).

Why Lucene and Anserini's own document generator: the index is exactly what Pyserini's indexer builds (fields
`id` and `contents`, Anserini's default English analyzer), so BM25 scores match Pyserini's published baselines and
the index opens in any Pyserini tool. Why per tenant: isolation holds by construction and BM25 statistics (document
frequencies, average length) are the tenant's own.

Files: `<FAISS_DATA_DIR>/<namespace>/<tenant>.lucene/` is a Lucene index directory; `<tenant>.lucene.lock` beside
it serialises writers across processes (Lucene's write.lock throws instead of waiting). Each write opens an
IndexWriter, replaces documents by their `id` term, commits and closes: durable when upsert returns, and a writer
killed before its commit leaves the index at the previous commit. Readers notice a newer commit (segments_N) and
reopen. The JVM starts in the process on first use (embeddings.stores.pyserini_runtime), never before a fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from core.errors import BackendError, MedkgError
from core.logging import log_event
from embeddings.stores.base import SearchHit, SparseItem, SparseStore, SparseStoreConfig, StoreStats
from embeddings.stores.files import data_dir_writable
from embeddings.stores.files import safe_component as _safe_component
from embeddings.stores.pyserini_runtime import english_analyzer, java_class, java_error, jvm_status
from namespaces.config import pyserini_config

logger = logging.getLogger("medkg.embeddings.stores")

INDEX_SUFFIX = ".lucene"
ID_FIELD = "id"  # Anserini's Constants.ID
CONTENTS_FIELD = "contents"  # Anserini's Constants.CONTENTS
_COMMIT_PREFIX = "segments_"
# A query longer than Lucene's default 1,024 clauses (a pasted document) must not fail: one clause per term.
MAX_QUERY_CLAUSES = 65_536


def latest_commit(path: Path) -> tuple[str, int] | None:
    """(segments_N name, inode) of the index's newest commit, None when there is no index yet."""
    try:
        names = [name for name in os.listdir(path) if name.startswith(_COMMIT_PREFIX)]
    except FileNotFoundError:
        return None
    generations = []
    for name in names:
        with contextlib.suppress(ValueError):
            generations.append((int(name.removeprefix(_COMMIT_PREFIX), 36), name))
    for _, name in sorted(generations, reverse=True):
        with contextlib.suppress(FileNotFoundError):  # a concurrent commit may have just removed it
            return name, (path / name).stat().st_ino
    return None


@dataclass
class _OpenSearcher:
    commit: tuple[str, int]
    searcher: Any  # io.anserini.search.SimpleSearcher

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.searcher.close()


class LuceneStore(SparseStore):
    indexes_text = True

    def __init__(self, config: SparseStoreConfig, data_dir: Path | None = None) -> None:
        super().__init__(config)
        self.directory = Path(data_dir or settings.FAISS_DATA_DIR) / _safe_component(config.namespace, "namespace")
        defaults = pyserini_config().bm25
        self.k1 = float(config.parameter("k1", defaults.k1))
        self.b = float(config.parameter("b", defaults.b))
        self._searchers: dict[str, _OpenSearcher] = {}
        self._write_locks: dict[str, threading.Lock] = {}
        self._search_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._analyzer: Any = None

    # Files and locks

    def path_for(self, tenant: str) -> Path:
        return self.directory / f"{_safe_component(tenant, 'tenant')}{INDEX_SUFFIX}"

    def _lock(self, locks: dict[str, threading.Lock], tenant: str) -> threading.Lock:
        with self._guard:
            return locks.setdefault(tenant, threading.Lock())

    @contextlib.contextmanager
    def _exclusive(self, tenant: str) -> Iterator[Path]:
        """The tenant's index to write, held against every other writer thread and process."""
        path = self.path_for(tenant)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock(self._write_locks, tenant), open(f"{path}.lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _analyzer_get(self) -> Any:
        with self._guard:
            if self._analyzer is None:
                self._analyzer = english_analyzer()
            return self._analyzer

    def _fs_directory(self, path: Path) -> Any:
        file = java_class("java.io.File")(str(path))
        return java_class("org.apache.lucene.store.FSDirectory").open(file.toPath())

    @contextlib.contextmanager
    def _writer(self, tenant: str) -> Iterator[Any]:
        """An IndexWriter on the tenant's index that commits when the block ends and rolls back when it raises."""
        with self._exclusive(tenant) as path:
            config = java_class("org.apache.lucene.index.IndexWriterConfig")(self._analyzer_get())
            config.setOpenMode(java_class("org.apache.lucene.index.IndexWriterConfig$OpenMode").CREATE_OR_APPEND)
            config.setSimilarity(java_class("org.apache.lucene.search.similarities.BM25Similarity")())
            policy = java_class("org.apache.lucene.index.TieredMergePolicy")()  # Lucene's default policy, but
            policy.setForceMergeDeletesPctAllowed(0.0)  # purge() rewrites every segment with a deleted document
            config.setMergePolicy(policy)
            try:
                writer = java_class("org.apache.lucene.index.IndexWriter")(self._fs_directory(path), config)
            except Exception as error:  # jnius.JavaException
                raise self._error("open the index for writing", tenant, error) from error
            try:
                yield writer
                writer.commit()  # fsyncs the new segments and segments_N: durable from here
                writer.close()
            except BaseException as error:
                with contextlib.suppress(Exception):
                    writer.rollback()  # drops everything since the last commit and closes the writer
                if isinstance(error, Exception) and not isinstance(error, MedkgError):  # jnius.JavaException
                    raise self._error("write", tenant, error) from error
                raise

    def _error(self, action: str, tenant: str, error: BaseException) -> BackendError:
        return BackendError(
            f"Lucene could not {action} for {self.config.namespace}/{tenant}: {java_error(error)}; if the index is "
            f"damaged, rebuild it with `manage.py rebuild_index --namespace {self.config.namespace}`.",
            details={"namespace": self.config.namespace, "tenant": tenant},
        )

    # Writes

    def _document(self, generator: Any, label: int, text: str) -> Any:
        """The Lucene document Anserini's IndexCollection would make for (id, contents)."""
        source = java_class("io.anserini.collection.JsonCollection$Document")
        if text.strip():
            return generator.createDocument(source.fromFields(str(label), text))
        # Anserini refuses empty contents; keep the document (it counts, it never matches) with its id fields only.
        document = generator.createDocument(source.fromFields(str(label), "-"))
        document.removeField(CONTENTS_FIELD)
        return document

    def _generator(self) -> Any:
        arguments = java_class("io.anserini.index.IndexCollection$Args")()
        arguments.storePositions = True  # phrase and proximity queries stay possible; the text itself is in the DB
        return java_class("io.anserini.index.generator.DefaultLuceneDocumentGenerator")(arguments)

    def upsert(self, *, tenant: str, items: Sequence[SparseItem]) -> int:
        latest = {item.label: item.text for item in items}  # the same label twice in one call: the last one wins
        if not latest:
            return 0
        term_class = java_class("org.apache.lucene.index.Term")
        generator = self._generator()
        with self._writer(tenant) as writer:
            for label, text in latest.items():
                writer.updateDocument(term_class(ID_FIELD, str(label)), self._document(generator, label, text or ""))
        return len(latest)

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        if not labels or latest_commit(self.path_for(tenant)) is None:
            return 0
        with self._writer(tenant) as writer:
            before = writer.getDocStats().numDocs
            writer.deleteDocuments(self._labels_query(labels))
            writer.flush()  # applies the deletes, so the count below sees them
            removed = before - writer.getDocStats().numDocs
        return int(removed)

    def optimize(self, *, tenant: str) -> None:
        """Merge the tenant's index into one segment, without its deleted documents.

        For the end of a bootstrap or rebuild, or after many updates: a search costs time per segment (an index
        ingested in 1,000-document commits answers about 3x slower than the same index merged), and until a merge
        replaced and deleted documents still count in BM25's document frequencies. Rewrites the whole index.
        """
        if latest_commit(self.path_for(tenant)) is None:
            return
        with self._writer(tenant) as writer:
            writer.forceMerge(1)
        log_event(logger, "lucene_index_optimized", namespace=self.config.namespace, tenant=tenant)

    def purge(self, *, tenant: str) -> int:
        """Merge away the segments' deleted documents (Lucene keeps them until a merge), the rest untouched."""
        if latest_commit(self.path_for(tenant)) is None:
            return 0
        with self._writer(tenant) as writer:
            stats = writer.getDocStats()
            deleted = int(stats.maxDoc - stats.numDocs)
            if deleted:
                writer.forceMergeDeletes(True)
        return deleted

    def drop(self, *, tenant: str | None = None) -> None:
        for name in [tenant] if tenant is not None else self.tenants():
            with self._exclusive(name) as path:
                shutil.rmtree(path, ignore_errors=True)
            log_event(logger, "lucene_index_dropped", namespace=self.config.namespace, tenant=name)
            with self._lock(self._search_locks, name):
                opened = self._searchers.pop(name, None)
                if opened is not None:
                    opened.close()

    # Reads

    def _searcher(self, tenant: str) -> Any:
        """The tenant's SimpleSearcher at its newest commit (reopened when any process committed); hold the lock."""
        path = self.path_for(tenant)
        commit = latest_commit(path)
        opened = self._searchers.get(tenant)
        if opened is not None and opened.commit == commit:
            return opened.searcher
        if opened is not None:
            opened.close()
            del self._searchers[tenant]
        if commit is None:
            return None
        java_class("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_QUERY_CLAUSES)
        try:
            # Anserini's SimpleSearcher, the object Pyserini's LuceneSearcher wraps: the same search, without
            # importing pyserini.search.lucene (torch, transformers: 7+ s in each worker) or its second reader.
            searcher = java_class("io.anserini.search.SimpleSearcher")(str(path))
        except Exception as error:  # jnius.JavaException
            raise self._error("open the index", tenant, error) from error
        searcher.set_bm25(self.k1, self.b)
        self._searchers[tenant] = _OpenSearcher(commit=commit, searcher=searcher)
        return searcher

    def _labels_query(self, labels: Sequence[int]) -> Any:
        """A Lucene query matching the documents of `labels` (their `id` terms)."""
        bytes_ref, string = java_class("org.apache.lucene.util.BytesRef"), java_class("java.lang.String")
        ids = java_class("java.util.ArrayList")()
        for label in set(labels):
            ids.add(bytes_ref(string(str(int(label)))))
        return java_class("org.apache.lucene.search.TermInSetQuery")(ID_FIELD, ids)

    def _query(self, query_terms: dict[str, float], query_text: str, allowed_labels: Sequence[int] | None) -> Any:
        generator = java_class("io.anserini.search.query.BagOfWordsQueryGenerator")()
        if query_text.strip():
            query = generator.buildQuery(CONTENTS_FIELD, self._analyzer_get(), query_text)
        else:  # analysed terms from Bm25Provider.encode: each weight boosts its term, as repeated words would
            weights = java_class("java.util.HashMap")()
            float_class = java_class("java.lang.Float")
            for term, weight in self.check_terms(query_terms).items():
                weights.put(term, float_class(float(weight)))
            query = generator.buildQuery(CONTENTS_FIELD, weights)
        if allowed_labels is None:
            return query
        only = self._labels_query(allowed_labels)
        occur = java_class("org.apache.lucene.search.BooleanClause$Occur")
        builder = java_class("org.apache.lucene.search.BooleanQuery$Builder")()
        builder.add(query, occur.MUST)
        builder.add(only, occur.FILTER)  # FILTER restricts without scoring: BM25 scores stay the same
        return builder.build()

    def search(
        self,
        *,
        tenant: str,
        query_terms: dict[str, float],
        query_text: str,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        if k <= 0 or (allowed_labels is not None and len(allowed_labels) == 0):
            return []
        if not query_text.strip() and not query_terms:
            return []
        path = self.path_for(tenant)
        if latest_commit(path) is None:
            return []
        # Plain text and no restriction: Pyserini's own call (analysis and query building inside Java).
        plain = bool(query_text.strip()) and allowed_labels is None
        query = query_text if plain else self._query(query_terms, query_text, allowed_labels)
        # One lock per tenant: a Pyserini searcher shared by threads returned wrong scores.
        with self._lock(self._search_locks, tenant):
            searcher = self._searcher(tenant)
            if searcher is None:
                return []
            try:
                hits = searcher.search(query, k)
            except Exception as error:  # jnius.JavaException
                raise self._error("search", tenant, error) from error
            return [SearchHit(label=int(hit.docid), score=float(hit.score)) for hit in hits if hit.score > 0]

    @contextlib.contextmanager
    def _reader(self, tenant: str) -> Iterator[Any]:
        """A DirectoryReader on the tenant's newest commit (None without an index), closed afterwards."""
        path = self.path_for(tenant)
        if latest_commit(path) is None:
            yield None
            return
        try:
            reader = java_class("org.apache.lucene.index.DirectoryReader").open(self._fs_directory(path))
        except Exception as error:  # jnius.JavaException
            raise self._error("open the index", tenant, error) from error
        try:
            yield reader
        finally:
            reader.close()

    def count(self, *, tenant: str) -> int:
        with self._reader(tenant) as reader:
            return int(reader.numDocs()) if reader is not None else 0

    def labels(self, *, tenant: str) -> set[int]:
        with self._reader(tenant) as reader:
            if reader is None:
                return set()
            live = java_class("org.apache.lucene.index.MultiBits").getLiveDocs(reader)
            stored = reader.storedFields()
            return {
                int(stored.document(docid).get(ID_FIELD))
                for docid in range(reader.maxDoc())
                if live is None or live.get(docid)
            }

    def tenants(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.name.removesuffix(INDEX_SUFFIX) for path in self.directory.glob(f"*{INDEX_SUFFIX}"))

    def stats(self) -> list[StoreStats]:
        result = []
        for tenant in self.tenants():
            with self._reader(tenant) as reader:
                if reader is None:
                    continue
                documents, deleted = int(reader.numDocs()), int(reader.numDeletedDocs())
            size = sum(file.stat().st_size for file in self.path_for(tenant).iterdir() if file.is_file())
            result.append(StoreStats(tenant=tenant, vectors=documents, tombstones=deleted, bytes_on_disk=size))
        return result

    def readiness(self) -> tuple[bool, str]:
        ready, detail = jvm_status()  # never starts the JVM
        if not ready:
            return False, detail
        writable, reason = data_dir_writable(self.directory.parent)
        if not writable:
            return False, reason
        return True, f"Lucene BM25 k1={self.k1} b={self.b}; {detail}"
