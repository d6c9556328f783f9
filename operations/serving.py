"""Which namespace serves a request: the one asked for, or its legacy namespace during a rollback.

Every serving process keeps a snapshot of the routes (and of the serving generation) for at most
MEDKG_SERVING_STATE_TTL seconds, so resolving a namespace costs no query on most requests and a rollback
reaches every process within that time (the rollback waits it out before it scales the primary down).
A change of generation (purge_embedding_cache, reload_providers) makes the process drop its cached providers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings

from core.cache import TTLCache
from core.logging import log_event
from embeddings.providers.registry import providers_reset
from namespaces.models import Namespace
from operations.models import NamespaceRoute, ServingControl

logger = logging.getLogger("medkg.operations")


@dataclass(frozen=True)
class ServingState:
    generation: int
    routes: dict[int, Namespace] = field(default_factory=dict)  # source namespace id → target namespace


def serving_state_ttl() -> float:
    return float(settings.MEDKG_SERVING_STATE_TTL)


# One snapshot for the process, loaded by one thread while the others wait (every request needs it).
_state: TTLCache[str, ServingState] = TTLCache(serving_state_ttl, max_entries=1, single_flight=True)


def _load(previous: ServingState | None) -> ServingState:
    routes = {route.source_id: route.target for route in NamespaceRoute.objects.select_related("target")}
    generation = ServingControl.objects.values_list("generation", flat=True).first() or 0
    if previous is not None and generation != previous.generation:
        providers_reset()
        log_event(logger, "serving_caches_dropped", generation=generation, previous=previous.generation)
    return ServingState(generation=generation, routes=routes)


def serving_state() -> ServingState:
    state = _state.get("state", _load)
    assert state is not None  # _load always returns a state
    return state


def serving_state_invalidate() -> None:
    """Reload at the next request (this process changed a route: it sees the change at once)."""
    _state.expire()


def namespace_serving(namespace: Namespace) -> Namespace:
    """The namespace that serves requests for `namespace` now: itself, or its rollback target."""
    return serving_state().routes.get(namespace.pk, namespace)
