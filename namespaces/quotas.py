"""Per-tenant quotas: API requests per second and embedded tokens per minute; limits on what a tenant stores.

Token buckets, in Redis when REDIS_URL is set (one Lua script per decision: atomic across every web process)
and in this process otherwise. A request takes one request token before its view runs and is refused while the
tenant's token bucket is empty; the tokens a request embedded are charged once they are known, so one large
request may take the bucket below zero and the next ones wait until it refills.

Limits: the tenant's own (`Tenant.quota_*`, set in the admin), else the settings' defaults; 0 is unlimited.
When Redis fails, requests are let through (counted as `unenforced`): quotas protect capacity, they must
not take the API down with the cache.

Stored documents and bytes are limits, not rates: they are kept on the tenant's `TenantUsage` row, which
ingestion locks and changes in the transaction that accepts or deletes documents, so concurrent requests of one
tenant cannot together pass a limit, and a check reads one row whatever the tenant stores.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from core.errors import DocumentLimitExceeded, QuotaExceeded, StorageLimitExceeded
from core.logging import log_event
from namespaces.metrics import QUOTA_DECISIONS
from namespaces.models import Tenant, TenantUsage

logger = logging.getLogger("medkg.namespaces")

# KEYS[1]: the bucket; ARGV: capacity, refill per second, cost, mode (take | check | charge).
# Returns {allowed (0/1), level after the decision as text (Lua numbers would lose the fraction)}.
_BUCKET_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1])
local at = tonumber(state[2])
if level == nil or at == nil then
  level = capacity
  at = now
end
level = math.min(capacity, level + math.max(0, now - at) * rate)
local allowed = 1
if mode == 'take' then
  if level >= cost then level = level - cost else allowed = 0 end
elseif mode == 'check' then
  if level <= 0 then allowed = 0 end
else
  level = level - cost
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return {allowed, tostring(level)}
"""


@dataclass(frozen=True)
class Bucket:
    kind: str  # "requests" or "tokens": the metric's label and the key's
    capacity: float
    rate: float  # refill per second

    def retry_after(self, level: float, cost: float) -> int:
        """Whole seconds until the bucket holds `cost` (or more than nothing, for cost 0)."""
        missing = max(cost - level, 0.0) if cost else max(-level, 0.0)
        return max(1, math.ceil(missing / self.rate))


def tenant_buckets(tenant: Tenant) -> tuple[Bucket | None, Bucket | None]:
    """The tenant's request and token buckets; None where unlimited."""
    per_second = tenant.quota_requests_per_second
    if per_second is None:
        per_second = settings.MEDKG_QUOTA_REQUESTS_PER_SECOND
    per_minute = tenant.quota_tokens_per_minute
    if per_minute is None:
        per_minute = settings.MEDKG_QUOTA_TOKENS_PER_MINUTE
    requests = Bucket("requests", capacity=max(1.0, per_second), rate=per_second) if per_second > 0 else None
    tokens = Bucket("tokens", capacity=float(per_minute), rate=per_minute / 60) if per_minute > 0 else None
    return requests, tokens


# --- the two stores ------------------------------------------------------------------------


class _LocalBuckets:
    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def decide(self, key: str, bucket: Bucket, cost: float, mode: str) -> tuple[bool, float]:
        with self._lock:
            now = time.monotonic()
            level, at = self._levels.get(key, (bucket.capacity, now))
            level = min(bucket.capacity, level + max(0.0, now - at) * bucket.rate)
            allowed = True
            if mode == "take":
                allowed = level >= cost
                level -= cost if allowed else 0
            elif mode == "check":
                allowed = level > 0
            else:
                level -= cost
            self._levels[key] = (level, now)
            return allowed, level

    def clear(self) -> None:
        with self._lock:
            self._levels.clear()


_local = _LocalBuckets()


@lru_cache(maxsize=4)
def _redis_script(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return client.register_script(_BUCKET_SCRIPT)


def _decide(tenant: Tenant, bucket: Bucket, cost: float, mode: str) -> tuple[bool, float] | None:
    """(allowed, level after), or None when Redis failed."""
    return _bucket_decide(f"medkg:quota:{bucket.kind}:{tenant.slug}", bucket, cost, mode)


def _bucket_decide(key: str, bucket: Bucket, cost: float, mode: str) -> tuple[bool, float] | None:
    if not settings.REDIS_URL:
        return _local.decide(key, bucket, cost, mode)
    import redis

    try:
        allowed, level = _redis_script(settings.REDIS_URL)(keys=[key], args=[bucket.capacity, bucket.rate, cost, mode])
    except redis.RedisError as error:
        log_event(logger, "quota_unenforced", logging.WARNING, kind=bucket.kind, error=type(error).__name__)
        return None
    return bool(allowed), float(level)


def _refuse(tenant: Tenant, bucket: Bucket, limit: float, retry_after: int, operation: str) -> QuotaExceeded:
    QUOTA_DECISIONS.labels(kind=bucket.kind, operation=operation, outcome="limited").inc()
    unit = "requests per second" if bucket.kind == "requests" else "tokens per minute"
    log_event(logger, "quota_exceeded", tenant=tenant.slug, kind=bucket.kind, retry_after=retry_after)
    return QuotaExceeded(
        f"Tenant {tenant.slug} is over its quota of {limit:g} {unit}; retry after {retry_after} s.",
        details={"kind": bucket.kind, "limit": limit, "retry_after_seconds": retry_after},
        retry_after=retry_after,
    )


# --- services ------------------------------------------------------------------------------


def quota_check_request(*, tenant: Tenant, operation: str = "other") -> None:
    """Take one request from the tenant's quota; QuotaExceeded (429) when it or the token quota is spent.

    `operation` (embed, ingest, search, other) only labels the decisions counted.
    """
    requests, tokens = tenant_buckets(tenant)
    if requests is not None:
        _admit(tenant, requests, amount=1.0, mode="take", limit=requests.rate, operation=operation)
    if tokens is not None:  # only checked here: the tokens are charged once the request has been embedded
        _admit(tenant, tokens, amount=0.0, mode="check", limit=tokens.capacity, operation=operation)


def _admit(tenant: Tenant, bucket: Bucket, *, amount: float, mode: str, limit: float, operation: str) -> None:
    """One bucket's decision, counted; QuotaExceeded when it refuses."""
    decision = _decide(tenant, bucket, amount, mode)
    if decision is not None and not decision[0]:
        raise _refuse(tenant, bucket, limit, bucket.retry_after(decision[1], amount), operation)
    outcome = "unenforced" if decision is None else "allowed"
    QUOTA_DECISIONS.labels(kind=bucket.kind, operation=operation, outcome=outcome).inc()


def quota_charge_tokens(*, tenant: Tenant, tokens: int) -> None:
    """Charge the tokens a request embedded or will embed (embed and search once computed, ingestion when it
    accepts): it was let in; the next ones wait if this overdraws."""
    _, bucket = tenant_buckets(tenant)
    if bucket is not None and tokens > 0:
        _decide(tenant, bucket, float(tokens), "charge")


# --- what a tenant stores ------------------------------------------------------------------


def tenant_storage_limits(tenant: Tenant) -> tuple[int, int]:
    """The tenant's limits of live documents and stored bytes: its own, else the settings'; 0 is unlimited."""
    documents = tenant.max_documents
    if documents is None:
        documents = settings.MEDKG_MAX_DOCUMENTS_PER_TENANT
    stored_bytes = tenant.max_stored_bytes
    if stored_bytes is None:
        stored_bytes = settings.MEDKG_MAX_STORED_BYTES_PER_TENANT
    return documents, stored_bytes


def tenant_usage_lock(*, tenant: Tenant) -> TenantUsage:
    """The tenant's usage row, locked until the caller's transaction ends: one tenant's accepts and deletes queue
    here (take it before any document row, always in this order, so two of them cannot deadlock)."""
    usage, _ = TenantUsage.objects.select_for_update().get_or_create(tenant=tenant)
    return usage


def tenant_usage_change(*, usage: TenantUsage, tenant: Tenant, documents: int, stored_bytes: int) -> None:
    """Apply a change (negative frees) to the locked usage row. A change that adds documents or bytes past a
    limit is refused: DocumentLimitExceeded or StorageLimitExceeded (413), and the caller's transaction rolls back.
    A change that shrinks usage is always let through, even while the tenant is above a limit lowered since."""
    document_limit, byte_limit = tenant_storage_limits(tenant)
    _storage_admit(tenant, "documents", usage.documents, documents, document_limit)
    _storage_admit(tenant, "bytes", usage.stored_bytes, stored_bytes, byte_limit)
    if documents or stored_bytes:
        usage.documents += documents
        usage.stored_bytes += stored_bytes
        usage.save(update_fields=["documents", "stored_bytes", "updated_at"])


def _storage_admit(tenant: Tenant, kind: str, current: int, added: int, limit: int) -> None:
    if limit <= 0 or added <= 0:
        return  # unlimited, or nothing added: no decision to count
    if current + added <= limit:
        QUOTA_DECISIONS.labels(kind=kind, operation="ingest", outcome="allowed").inc()
        return
    QUOTA_DECISIONS.labels(kind=kind, operation="ingest", outcome="limited").inc()
    log_event(logger, "storage_limit_exceeded", tenant=tenant.slug, kind=kind, usage=current, added=added, limit=limit)
    details = {"kind": kind, "limit": limit, "usage": current, "requested": added}
    if kind == "documents":
        raise DocumentLimitExceeded(
            f"Tenant {tenant.slug} stores {current} documents; {added} more would pass its limit of {limit}. "
            "Delete documents or ask for a higher limit.",
            details=details,
        )
    raise StorageLimitExceeded(
        f"Tenant {tenant.slug} stores {current} bytes; {added} more would pass its limit of {limit} bytes. "
        "Delete documents or ask for a higher limit.",
        details=details,
    )


def address_throttle_unauthenticated(address: str | None) -> int | None:
    """Take one from the client address's budget of refusals before authentication: None while it lasts, else
    the seconds to wait (the caller answers 429). A valid token never reaches this, so a NAT shared with a
    flooder does not lock out its tenants; only unauthenticated requests from that address wait."""
    rate = settings.MEDKG_UNAUTHENTICATED_PER_SECOND
    if rate <= 0:
        return None
    bucket = Bucket("unauthenticated", capacity=max(1.0, float(settings.MEDKG_UNAUTHENTICATED_BURST)), rate=rate)
    decision = _bucket_decide(f"medkg:unauthenticated:{address or '-'}", bucket, 1.0, "take")
    if decision is None or decision[0]:
        return None
    return bucket.retry_after(decision[1], 1.0)


def quotas_reset() -> None:
    """Forget in-process buckets and the Redis address buckets (tests)."""
    _local.clear()
    if settings.REDIS_URL:
        import redis

        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
            keys = list(client.scan_iter("medkg:unauthenticated:*"))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # no Redis, no buckets to forget
