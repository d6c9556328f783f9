"""Access-control metrics. Labels stay low-cardinality: reason and endpoint route name, never tenant ids."""

from prometheus_client import Counter

CROSS_TENANT_ACCESS_ATTEMPTS = Counter(
    "medicalkg_cross_tenant_access_attempts_total",
    "Refused requests: bad or missing token, missing scope, tenant mismatch, namespace not granted.",
    ["reason", "endpoint"],
)

QUOTA_DECISIONS = Counter(
    "medkg_quota_decisions_total",
    "Per-tenant quota decisions by kind (requests, tokens) and outcome (allowed, limited, unenforced: Redis failed).",
    ["kind", "outcome"],
)
