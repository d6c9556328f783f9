"""Fresh processes for the Lucene store tests (python -m tests.embeddings.lucene_child COMMAND DATA_DIR ...).

fork-search: a process that has not started the JVM forks two workers (multiprocessing 'fork', as Celery prefork
and gunicorn do); each searches and sends its hits back. Then the parent starts the JVM and forks again: those
workers must get BackendUnavailable, not hang. Prints one JSON object.
crash-upsert: commits a first batch, says so on stdout, then runs one large upsert until the test kills it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
from pathlib import Path
from typing import Any

import django

NAMESPACE = "sparse.bm25.auto.v1"


def _store(data_dir: str) -> Any:
    from embeddings.stores.base import SparseStoreConfig
    from embeddings.stores.lucene import LuceneStore

    return LuceneStore(SparseStoreConfig(namespace=NAMESPACE, backend="lucene"), Path(data_dir))


def _search(arguments: tuple[str, str, str]) -> dict[str, Any]:
    from core.errors import BackendUnavailable

    data_dir, tenant, query = arguments
    try:
        hits = _store(data_dir).search(tenant=tenant, query_terms={}, query_text=query, k=10)
    except BackendUnavailable as error:
        return {"pid": os.getpid(), "error": error.code, "message": error.message}
    return {"pid": os.getpid(), "hits": [[hit.label, hit.score] for hit in hits]}


def fork_search(data_dir: str, tenant: str, queries: list[str]) -> dict[str, Any]:
    from embeddings.stores.pyserini_runtime import jvm_start
    from tests.embeddings.test_lucene_bm25 import bm25_provider

    context = multiprocessing.get_context("fork")
    jobs = [(data_dir, tenant, query) for query in queries]
    # What a master may do before it forks (health checks, MEDKG_PRELOAD_MODELS): readiness never starts the JVM.
    ready = [bm25_provider().readiness().ready, _store(data_dir).readiness()[0]]
    report: dict[str, Any] = {"parent": os.getpid(), "ready": ready, "jvm_before_fork": "jnius" in sys.modules}
    with context.Pool(2) as pool:
        report["workers"] = pool.map_async(_search, jobs).get(timeout=120)
    jvm_start()  # now the parent holds a JVM: workers forked from here inherit a dead one
    with context.Pool(2) as pool:
        report["after_parent_started_jvm"] = pool.map_async(_search, jobs[:2]).get(timeout=120)
    return report


def crash_upsert(data_dir: str, tenant: str, first: int, large: int) -> None:
    from embeddings.stores.base import SparseItem

    store = _store(data_dir)
    words = [f"word{i}" for i in range(5000)]
    rng = random.Random(7)
    store.upsert(tenant=tenant, items=[SparseItem(label=i, terms={}, text=f"committed {i}") for i in range(first)])
    batch = [SparseItem(label=first + i, terms={}, text=" ".join(rng.choices(words, k=60))) for i in range(large)]
    print("committed", flush=True)
    store.upsert(tenant=tenant, items=batch)
    print("finished", flush=True)  # the test kills the process before this


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
    django.setup()
    command, data_dir, tenant, *rest = sys.argv[1:]
    if command == "fork-search":
        print(json.dumps(fork_search(data_dir, tenant, rest)), flush=True)
    elif command == "crash-upsert":
        crash_upsert(data_dir, tenant, int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
