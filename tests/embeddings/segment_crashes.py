"""The SIGKILL harness of the segmented stores (FAISS, impact): a writer killed during steps, replacements, deletes
and merges loses nothing accepted and duplicates nothing. Each store's test says how to write a batch and search."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BATCH = 40
DELAYS = (1.5, 2.1, 2.7, 3.3)


def ingest_forever(store: Any, batch_of: Callable[[int], list[Any]], journal: str) -> None:
    """Until killed: batch b adds labels b*40.., replaces batch b-1 and deletes 5 of batch b-2, then merges;
    the journal gets b once the batch's writes returned (accepted)."""
    batch = 0
    with open(journal, "a") as log:
        while True:
            store.upsert(tenant="a", items=batch_of(batch * BATCH))
            if batch >= 1:
                store.upsert(tenant="a", items=batch_of((batch - 1) * BATCH))
            if batch >= 2:
                store.delete(tenant="a", labels=list(range((batch - 2) * BATCH, (batch - 2) * BATCH + 5)))
            log.write(f"{batch}\n")
            log.flush()
            os.fsync(log.fileno())
            store.merge(tenant="a")
            batch += 1


def expected_after(batch: int) -> set[int]:
    labels = set(range((batch + 1) * BATCH))
    for done in range(2, batch + 1):
        labels -= set(range((done - 2) * BATCH, (done - 2) * BATCH + 5))
    return labels


def kill_writers_and_check(
    tmp_path: Path,
    writer: Callable[[str, str], None],
    reopen: Callable[[Path], Any],
    search_all: Callable[[Any, float, int], list[Any]],
    one_item: Callable[[float], Any],
) -> None:
    """Start `writer(data, journal)` in a process, SIGKILL it at each of DELAYS, and check what a fresh store sees."""
    context = multiprocessing.get_context("spawn")
    journal = tmp_path / "journal"
    for delay in DELAYS:
        child = context.Process(target=writer, args=(str(tmp_path / "data"), str(journal)))
        child.start()
        time.sleep(delay)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        accepted = int(journal.read_text().split()[-1])
        store = reopen(tmp_path / "data")
        labels = store.labels(tenant="a")
        # The last accepted batch is all there; the batch in flight may be partly there (it was not accepted).
        in_flight_delete = set(range((accepted - 1) * BATCH, (accepted - 1) * BATCH + 5))
        assert expected_after(accepted) - labels <= in_flight_delete
        assert labels <= set(range((accepted + 2) * BATCH))
        assert store.count(tenant="a") == len(labels)  # every label alive once
        hits = search_all(store, delay, len(labels))
        assert len(hits) == len({hit.label for hit in hits}) == len(labels)
        leftovers = [p.name for p in store.path_for("a").iterdir() if p.name.startswith(".tmp-")]
        store.upsert(tenant="a", items=[one_item(delay)])  # the next writer cleans up after the crash
        assert not any((store.path_for("a") / name).exists() for name in leftovers)
        store.delete(tenant="a", labels=[10**9])
        journal.unlink()
        (tmp_path / "data").rename(tmp_path / f"data-{delay}")
