"""Sampled real search queries (QuerySample): what a migration's gate runs on both versions for overlap@10.

A search keeps its query with probability MEDKG_QUERY_SAMPLE_RATE, so the cost is one insert on a few searches, and
trims its tenant's samples to the newest MEDKG_QUERY_SAMPLE_KEEP now and then (one indexed delete), so what is kept
does not grow with the traffic.
"""

from __future__ import annotations

import logging
import random

from django.conf import settings
from django.db import DatabaseError

from core.logging import log_event
from embeddings.models import QuerySample
from namespaces.models import Namespace, Tenant

logger = logging.getLogger("medkg.embeddings")
MAX_SAMPLE_CHARS = 2000  # a query longer than this is cut: the sample is for ranking agreement, not an archive
TRIM_EVERY = 20  # a kept sample trims the old ones one time in TRIM_EVERY: the table stays near the limit


def query_sample_maybe(*, namespaces: list[Namespace], tenant: Tenant, query: str) -> None:
    """Keep `query` as a sample of `tenant` on each of `namespaces`, at the sample rate. Never fails the search."""
    rate = settings.MEDKG_QUERY_SAMPLE_RATE
    if not rate or not query.strip() or random.random() >= rate:  # noqa: S311 (sampling, not secrets)
        return
    try:
        for namespace in namespaces:
            sample = QuerySample.objects.create(namespace=namespace, tenant=tenant, text=query[:MAX_SAMPLE_CHARS])
            if sample.pk % TRIM_EVERY == 0:
                query_samples_trim(namespace=namespace, tenant=tenant)
    except DatabaseError as error:  # a sample is worth less than the answer
        log_event(logger, "query_sample_failed", level=logging.WARNING, error=str(error)[:300])


def query_samples_trim(*, namespace: Namespace, tenant: Tenant) -> int:
    """Delete all but the newest MEDKG_QUERY_SAMPLE_KEEP samples of the tenant on the namespace."""
    mine = QuerySample.objects.filter(namespace=namespace, tenant=tenant)
    oldest_kept = mine.order_by("-id").values_list("id", flat=True)[
        settings.MEDKG_QUERY_SAMPLE_KEEP - 1 : settings.MEDKG_QUERY_SAMPLE_KEEP
    ]
    cut = next(iter(oldest_kept), None)
    return mine.filter(id__lt=cut).delete()[0] if cut is not None else 0


def query_samples_recent(*, namespace: Namespace, tenant: Tenant, limit: int) -> list[str]:
    """The tenant's newest distinct sampled queries on the namespace, newest first."""
    texts = (
        QuerySample.objects.filter(namespace=namespace, tenant=tenant).order_by("-id").values_list("text", flat=True)
    )
    return list(dict.fromkeys(texts[: limit * 4]))[:limit]
