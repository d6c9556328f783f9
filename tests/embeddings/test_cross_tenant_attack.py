"""10,000 randomized cross-tenant attacks by tenant A on tenant B's data, in process (DRF test client).

Swapped tenant ids, B's own namespace, B's job ids and document ids, read tokens on write endpoints, and
forged, expired, tampered and `alg: none` tokens, on every endpoint. Asserted: never a 500, never a byte of B's
data (its secret marker, its tenant id) in an answer to A, every refused attempt counted by
medicalkg_cross_tenant_access_attempts_total and audited: as one AccessAuditEvent, or, before authentication,
in the count of its source's UnauthenticatedRefusalWindow, reason by reason.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

import jwt
import pytest
from django.conf import settings
from prometheus_client import REGISTRY

from embeddings.models import Document
from namespaces.models import AccessAuditEvent, Tenant, UnauthenticatedRefusalWindow
from namespaces.services import access_refusal_windows_flush
from tests.conftest import DEFAULT_NAMESPACE, make_token

ATTACKS = 10_000
SEED = 20261125
SECRET = "zq7-b-secret"
B_ONLY = "single_vector.minilm-b.384.v1"
B_DOCS = [
    {"id": f"{SECRET}-doc-{i}", "text": f"{SECRET} warfarin dose record {i}", "metadata": {"owner": SECRET}}
    for i in range(3)
]
A_DOCS = [{"id": f"a-doc-{i}", "text": f"warfarin dose record {i} of tenant A", "metadata": {}} for i in range(2)]


@dataclass(frozen=True)
class Attack:
    kind: str
    method: str
    path: str
    body: dict[str, Any] | None
    token: str | None
    status: int
    code: str  # expected error code; "" for an answer that is allowed but must hold nothing of B's
    reason: str  # the audited refusal reason; "" when not refused


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(tenant: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"token_type": "access", "exp": now + 600, "iat": now, "jti": "f" * 32, "tenant_id": tenant}
    return {**base, "scopes": ["embed:read", "embed:write"], **extra}


@pytest.fixture
def b_world(synced, tenant_b: Tenant, token_b_write, token_a_write, api, django_capture_on_commit_callbacks, settings):
    """Tenant B's namespace of its own, B's documents there and in the shared namespace (next to A's), B's jobs."""
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    own = synced[DEFAULT_NAMESPACE]
    own.pk = None
    own.name = B_ONLY
    own.allow_all_tenants = False
    own.source_file = ""
    own.save()
    own.allowed_tenants.set([tenant_b])
    jobs = []
    for namespace in (DEFAULT_NAMESPACE, B_ONLY):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                f"/v1/namespaces/{namespace}/documents",
                {"tenant_id": "tenant-b", "documents": B_DOCS},
                token=token_b_write,
            )
        assert response.status_code == 202, response.content
        jobs.append(response.json()["job_id"])
    assert Document.objects.filter(tenant=tenant_b).count() == 6
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents",
            {"tenant_id": "tenant-a", "documents": A_DOCS},
            token=token_a_write,
        )
    assert response.status_code == 202, response.content
    return {"jobs": jobs}


def attack_plan(rng: Random, tenant_a: Tenant, b_jobs: list[str]) -> Callable[[], Attack]:
    a_write = make_token(tenant_a, ["embed:read", "embed:write"])
    a_read = make_token(tenant_a, ["embed:read"])
    key = settings.SIMPLE_JWT["SIGNING_KEY"]
    header, _, signature = a_write.split(".")
    bad_tokens = {
        "forged_signature": (
            jwt.encode(claims("tenant-b"), "not-the-signing-key-of-this-deployment-at-all", algorithm="HS256"),
            401,
            "invalid_token",
        ),
        "expired": (
            jwt.encode(claims("tenant-a", exp=int(time.time()) - 60), key, algorithm="HS256"),
            401,
            "expired_token",
        ),
        "alg_none": (f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims('tenant-b'))}.", 401, "invalid_token"),
        "tampered_payload": (f"{header}.{b64(claims('tenant-b'))}.{signature}", 401, "invalid_token"),
        "garbage": ("not.a.jwt", 401, "invalid_token"),
        "missing": (None, 401, "missing_token"),
    }
    codes = {
        "invalid_token": "invalid_token",
        "expired_token": "token_expired",
        "missing_token": "not_authenticated",
        "tenant_mismatch": "tenant_mismatch",
        "namespace_not_granted": "namespace_not_found",
        "job_not_owned": "job_not_found",
        "insufficient_scope": "insufficient_scope",
    }

    def text() -> str:
        return rng.choice([SECRET, "warfarin dose", "aspirin", "tenant-b records"]) + f" {rng.randrange(10**6)}"

    def request(namespace: str, tenant: str, endpoint: str) -> tuple[str, str, dict[str, Any] | None, str]:
        """(method, path, body, scope) of one endpoint, aimed at `namespace` with payload tenant `tenant`."""
        ids = [doc["id"] for doc in rng.sample(B_DOCS, rng.randint(1, 3))]
        documents = f"/v1/namespaces/{namespace}/documents"
        return {
            "embed": ("POST", "/v1/embed", {"tenant_id": tenant, "namespace": namespace, "texts": [text()]}, "w"),
            "openai": ("POST", "/v1/embeddings", {"model": namespace, "input": text()}, "w"),
            "upsert": ("POST", documents, {"tenant_id": tenant, "documents": [{"id": ids[0], "text": text()}]}, "w"),
            "delete": ("DELETE", documents, {"tenant_id": tenant, "ids": ids}, "w"),
            "search": ("POST", f"/v1/namespaces/{namespace}/search", {"tenant_id": tenant, "query": text()}, "r"),
            "validate": ("POST", f"/v1/namespaces/{namespace}/validate", {"tenant_id": tenant, "texts": [text()]}, "r"),
            "job": ("GET", f"/v1/jobs/{rng.choice(b_jobs)}", None, "r"),
            "list": ("GET", "/v1/namespaces", None, "r"),
        }[endpoint]

    with_tenant = ["embed", "upsert", "delete", "search", "validate"]
    with_namespace = [*with_tenant, "openai"]
    everything = [*with_namespace, "job", "list"]

    def refused(kind: str, reason: str, method: str, path: str, body: Any, token: str | None, status: int) -> Attack:
        return Attack(kind, method, path, body, token, status, codes[reason], reason)

    def next_attack() -> Attack:
        kind = rng.choices(
            ["bad_token", "swapped_tenant", "b_namespace", "b_job", "read_token_writes", "shared_search"],
            weights=[40, 20, 20, 10, 8, 2],
        )[0]
        if kind == "bad_token":
            name = rng.choice(list(bad_tokens))
            token, status, reason = bad_tokens[name]
            method, path, body, _ = request(rng.choice([DEFAULT_NAMESPACE, B_ONLY]), "tenant-b", rng.choice(everything))
            return refused(f"{kind}:{name}", reason, method, path, body, token, status)
        if kind == "swapped_tenant":
            method, path, body, _ = request(DEFAULT_NAMESPACE, "tenant-b", rng.choice(with_tenant))
            return refused(kind, "tenant_mismatch", method, path, body, a_write, 403)
        if kind == "b_namespace":
            method, path, body, _ = request(B_ONLY, "tenant-a", rng.choice(with_namespace))
            return refused(kind, "namespace_not_granted", method, path, body, a_write, 404)
        if kind == "b_job":
            method, path, body, _ = request(DEFAULT_NAMESPACE, "tenant-a", "job")
            return refused(kind, "job_not_owned", method, path, body, rng.choice([a_read, a_write]), 404)
        if kind == "read_token_writes":
            endpoint = rng.choice(["embed", "openai", "upsert", "delete"])
            method, path, body, _ = request(rng.choice([DEFAULT_NAMESPACE, B_ONLY]), "tenant-a", endpoint)
            return refused(kind, "insufficient_scope", method, path, body, a_read, 403)
        # Allowed, in the namespace A and B share: A searches for B's words and ids and must find none of B's.
        method, path, body, _ = request(DEFAULT_NAMESPACE, "tenant-a", "search")
        assert body is not None
        body["query"] = f"{SECRET} {rng.choice(B_DOCS)['id']}"
        return Attack(kind, method, path, body, a_read, 200, "", "")

    return next_attack


def attempts_counted() -> Counter[str]:
    counted: Counter[str] = Counter()
    for family in REGISTRY.collect():
        if family.name == "medicalkg_cross_tenant_access_attempts":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counted[sample.labels["reason"]] += int(sample.value)
    return counted


@pytest.mark.slow
@pytest.mark.django_db
def test_ten_thousand_cross_tenant_attacks_leak_nothing_and_are_all_counted_and_audited(
    api, b_world, tenant_a: Tenant, tenant_b: Tenant, settings
):
    settings.MEDKG_UNAUTHENTICATED_PER_SECOND = 0  # every bad token answered 401 here; the throttle has its own tests
    next_attack = attack_plan(Random(SEED), tenant_a, b_world["jobs"])
    counted_before = attempts_counted()
    audited_before = AccessAuditEvent.objects.count()
    expected: Counter[str] = Counter()
    kinds: Counter[str] = Counter()

    for _ in range(ATTACKS):
        attack = next_attack()
        kinds[attack.kind.partition(":")[0]] += 1
        if attack.method == "GET":
            response = api.get(attack.path, token=attack.token)
        elif attack.method == "DELETE":
            response = api.delete(attack.path, attack.body, token=attack.token)
        else:
            response = api.post(attack.path, attack.body, token=attack.token)
        content = response.content
        assert response.status_code == attack.status, (attack, content[:300])
        assert SECRET.encode() not in content and b"tenant-b" not in content, (attack, content[:300])
        if attack.reason:
            assert json.loads(content)["error"]["code"] == attack.code, (attack, content[:300])
            expected[attack.reason] += 1
        else:
            hits = {hit["id"] for hit in json.loads(content)["hits"]}
            assert hits == {doc["id"] for doc in A_DOCS}  # B's closer matches are never A's

    counted = attempts_counted() - counted_before
    assert audited_before == 0  # the fixture's own requests were allowed: every audit row is an attack
    audited = Counter(AccessAuditEvent.objects.values_list("reason", flat=True))
    access_refusal_windows_flush()  # refusals before authentication are audited as counts per source and window
    for reason, count in UnauthenticatedRefusalWindow.objects.values_list("reason", "count"):
        audited[reason] += count
    assert sum(expected.values()) >= ATTACKS * 0.95
    assert counted == expected
    assert audited == expected
    assert all(kinds[kind] > 0 for kind in ("bad_token", "swapped_tenant", "b_namespace", "b_job", "read_token_writes"))
    # B's documents are all there, untouched by A's refused upserts and deletes of the same ids.
    kept = Document.objects.filter(tenant=tenant_b, deleted_at__isnull=True).values_list("external_id", flat=True)
    assert sorted(kept) == sorted([doc["id"] for doc in B_DOCS] * 2)
