"""Work done once when a server process starts."""

from __future__ import annotations

import logging

from django.conf import settings

from core.logging import log_event

logger = logging.getLogger("medkg.startup")


def preload_default_provider() -> None:
    """Load the default namespace's model now, so the first request does not pay for it."""
    if not settings.MEDKG_PRELOAD_MODELS:
        return
    from django.db import DatabaseError

    from embeddings.providers.registry import provider_for
    from embeddings.services import texts_check_budget
    from namespaces.models import Namespace

    try:
        namespace = Namespace.objects.filter(name=settings.MEDKG_DEFAULT_NAMESPACE).first()
    except DatabaseError as error:
        log_event(logger, "preload_skipped", logging.WARNING, reason=str(error))
        return
    if namespace is None:
        log_event(logger, "preload_skipped", logging.WARNING, reason="default namespace not synced")
        return
    readiness = provider_for(namespace).readiness()
    if readiness.ready:
        texts_check_budget(namespace=namespace, texts=["warm-up"])  # loads the budget tokenizer too
    log_event(logger, "preload_done", namespace=namespace.name, ready=readiness.ready, detail=readiness.detail)
