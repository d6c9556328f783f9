"""Access-control metrics. Labels stay low-cardinality: reason and endpoint route name, never tenant ids."""

from prometheus_client import Counter

CROSS_TENANT_ACCESS_ATTEMPTS = Counter(
    "medicalkg_cross_tenant_access_attempts_total",
    "Refused requests: bad or missing token, missing scope, tenant mismatch, namespace not granted.",
    ["reason", "endpoint"],
)

QUOTA_DECISIONS = Counter(
    "medkg_quota_decisions_total",
    "Per-tenant quota and limit decisions by kind (requests, tokens; documents, bytes: what a tenant stores), "
    "operation (embed, ingest, search, other) and outcome (allowed, limited, unenforced: Redis failed).",
    ["kind", "operation", "outcome"],
)

ALIAS_FLIPS = Counter(
    "medkg_namespace_alias_flips_total",
    "Alias flips (and creations) by alias: the alias now resolves to another namespace version.",
    ["alias"],
)
