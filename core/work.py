"""Who a piece of model work is for, and how urgent it is: the contract between the callers and the scheduler.

A request marks its work interactive and names its tenant; ingestion, backfills, standby writes and rebuilds mark
theirs bulk. The mark travels in a context variable (each thread and task has its own), so the services between
the caller and the model need no extra argument: a scheduler in front of a model reads `current_work()` when the
work is submitted, serves interactive before bulk and shares each class fairly between tenants.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


class WorkClass(StrEnum):
    INTERACTIVE = "interactive"  # /v1/embed, /v1/embeddings, the query embedding of a search
    BULK = "bulk"  # ingestion, backfills, standby writes, rebuilds


@dataclass(frozen=True)
class Work:
    tenant: str  # the tenant's slug; "" when no tenant is known (warm-up, operators' commands)
    work_class: WorkClass


_UNATTRIBUTED = Work(tenant="", work_class=WorkClass.INTERACTIVE)
_current: contextvars.ContextVar[Work] = contextvars.ContextVar("medkg_work", default=_UNATTRIBUTED)


def current_work() -> Work:
    """The work being done in this thread or task now (unattributed interactive work by default)."""
    return _current.get()


def work_mark(*, tenant: str, work_class: WorkClass) -> None:
    """Mark the rest of the current block's model work; only inside a `work_for` that restores the mark after
    (the request middleware opens one per request, so a thread's next request does not inherit it)."""
    _current.set(Work(tenant=tenant, work_class=work_class))


@contextlib.contextmanager
def work_for(*, tenant: str, work_class: WorkClass) -> Iterator[Work]:
    """Mark the model work done inside the block as `work_class` for `tenant`."""
    work = Work(tenant=tenant, work_class=work_class)
    token = _current.set(work)
    try:
        yield work
    finally:
        _current.reset(token)
