"""The `vllm` provider against a real OpenAI-compatible server on loopback (a second medkg, see conftest).

Real inference on both sides: the upstream runs MiniLM in its own process, the test compares with MiniLM here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from embeddings.providers.registry import providers_reset
from namespaces.models import Namespace, NamespaceKind, Tenant
from tests.conftest import DEFAULT_NAMESPACE, assert_error
from tests.embeddings.conftest import Upstream
from tests.servers import free_port

pytestmark = pytest.mark.slow

REMOTE_NAMESPACE = "single_vector.remote-minilm.384.v1"
API_KEY_VARIABLE = "MEDKG_TEST_UPSTREAM_API_KEY"
UNSET_VARIABLE = "MEDKG_TEST_UNSET_UPSTREAM_URL"
TEXTS = ["aspirin inhibits platelet aggregation", "metformin lowers hepatic glucose production", "β-blockers"]
# Over MiniLM's budget of 256 tokens: the upstream refuses it unless asked to truncate.
LONG_TEXT = " ".join(["myocardial infarction with ST elevation"] * 80)


@pytest.fixture(autouse=True)
def fresh_providers() -> Iterator[None]:
    """Providers (and their 5-second readiness cache) are per process: start and end each test without them."""
    providers_reset()
    yield
    providers_reset()


@pytest.fixture
def upstream(upstream_server: Upstream, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    monkeypatch.setenv(API_KEY_VARIABLE, upstream_server.token)
    monkeypatch.delenv(UNSET_VARIABLE, raising=False)
    return upstream_server


@pytest.fixture
def remote_namespace(tenant_a: Tenant, upstream: Upstream) -> Callable[..., Namespace]:
    """A `vllm` namespace granted to tenant A; by default it reaches the upstream's MiniLM with the right key."""

    def create(*, name: str = REMOTE_NAMESPACE, dim: int = 384, **fields: Any) -> Namespace:
        values: dict[str, Any] = {
            "kind": NamespaceKind.SINGLE_VECTOR,
            "provider": "vllm",
            "model_id": "sentence-transformers/all-MiniLM-L6-v2",
            "model_path": "",
            "tokenizer": "",  # like a GPU model: no local tokenizer, the server enforces the budget
            "max_tokens": 256,
            "normalize": True,
            "batch_size": 32,
            "endpoint": upstream.url,
            "parameters": {"served_model_name": DEFAULT_NAMESPACE, "api_key_env": API_KEY_VARIABLE},
            "allowed_scopes": ["embed:read", "embed:write"],
            "allow_all_tenants": False,
        }
        namespace = Namespace.objects.create(name=name, dim=dim, **{**values, **fields})
        namespace.allowed_tenants.set([tenant_a])
        return namespace

    return create


def embed(api: Any, token: str, namespace: str, texts: list[str], **options: Any) -> Any:
    body: dict[str, Any] = {"tenant_id": "tenant-a", "namespace": namespace, "texts": texts}
    if options:
        body["options"] = options
    return api.post("/v1/embed", body, token=token)


def vectors_of(response: Any) -> list[list[float]]:
    assert response.status_code == 200, response.content[:500]
    return [item["vector"] for item in response.json()["embeddings"]]


def test_vectors_are_the_upstream_models(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace], assert_reference_vectors: Any
) -> None:
    remote_namespace()

    response = embed(api, token_a_write, REMOTE_NAMESPACE, TEXTS)

    assert_reference_vectors(vectors_of(response), TEXTS)
    body = response.json()
    assert body["namespace"] == REMOTE_NAMESPACE
    assert body["dim"] == 384
    assert [item["text_index"] for item in body["embeddings"]] == [0, 1, 2]


def test_batches_keep_the_input_order(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace], assert_reference_vectors: Any
) -> None:
    remote_namespace(batch_size=2)
    texts = [*TEXTS, "warfarin", "heparin-induced thrombocytopenia"]

    assert_reference_vectors(vectors_of(embed(api, token_a_write, REMOTE_NAMESPACE, texts)), texts)


def test_a_dimension_other_than_the_upstreams_is_refused_without_vectors(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace]
) -> None:
    remote_namespace(name="single_vector.remote-minilm.768.v1", dim=768)

    response = embed(api, token_a_write, "single_vector.remote-minilm.768.v1", TEXTS)

    body = assert_error(response, 502, "dimension_mismatch")
    assert body["error"]["details"] == {"expected": 768, "received": [384]}
    assert len(response.content) < 1000  # the 384-dim vectors are not in the answer


def test_a_closed_port_is_backend_unavailable(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace]
) -> None:
    remote_namespace(endpoint=f"http://127.0.0.1:{free_port()}")

    assert_error(embed(api, token_a_write, REMOTE_NAMESPACE, TEXTS), 503, "backend_unavailable")


def test_an_unset_endpoint_variable_is_named(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace]
) -> None:
    remote_namespace(endpoint=f"${{{UNSET_VARIABLE}}}")

    body = assert_error(embed(api, token_a_write, REMOTE_NAMESPACE, TEXTS), 503, "backend_unavailable")

    assert UNSET_VARIABLE in body["error"]["message"]


def test_an_endpoint_variable_is_read_from_the_environment(
    api: Any,
    token_a_write: str,
    remote_namespace: Callable[..., Namespace],
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    assert_reference_vectors: Any,
) -> None:
    remote_namespace(endpoint=f"${{{UNSET_VARIABLE}}}/v1")
    monkeypatch.setenv(UNSET_VARIABLE, upstream.url)

    assert_reference_vectors(vectors_of(embed(api, token_a_write, REMOTE_NAMESPACE, TEXTS[:1])), TEXTS[:1])


def test_an_upstream_refusing_the_api_key_is_a_backend_error(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_namespace()
    monkeypatch.setenv(API_KEY_VARIABLE, "not-the-upstream-token")

    body = assert_error(embed(api, token_a_write, REMOTE_NAMESPACE, TEXTS), 502, "backend_error")

    assert body["error"]["details"]["backend_status"] == 401


def test_truncate_passes_through_to_the_upstream(
    api: Any, token_a_write: str, remote_namespace: Callable[..., Namespace], assert_reference_vectors: Any
) -> None:
    remote_namespace()

    refused = assert_error(embed(api, token_a_write, REMOTE_NAMESPACE, [LONG_TEXT]), 502, "backend_error")
    assert refused["error"]["details"]["backend_status"] == 422  # the upstream's token_budget_exceeded

    truncated = embed(api, token_a_write, REMOTE_NAMESPACE, [LONG_TEXT], truncate=True)
    assert_reference_vectors(vectors_of(truncated), [LONG_TEXT])  # the model itself stops at 256 tokens


def test_health_reports_each_remote_namespaces_readiness(
    api: Any, synced: dict[str, Namespace], remote_namespace: Callable[..., Namespace]
) -> None:
    remote_namespace()
    remote_namespace(name="single_vector.remote-closed.384.v1", endpoint=f"http://127.0.0.1:{free_port()}")
    remote_namespace(name="single_vector.remote-unset.384.v1", endpoint=f"${{{UNSET_VARIABLE}}}")

    response = api.get("/health")

    assert response.status_code == 200, response.content[:1000]
    providers = {entry["namespace"]: entry for entry in response.json()["providers"]}
    assert providers[REMOTE_NAMESPACE]["ready"] is True
    assert providers["single_vector.remote-closed.384.v1"]["ready"] is False
    assert providers["single_vector.remote-unset.384.v1"]["ready"] is False
    assert UNSET_VARIABLE in providers["single_vector.remote-unset.384.v1"]["detail"]
    assert providers[DEFAULT_NAMESPACE]["ready"] is True
