"""The model scheduler in front of a remote backend (vLLM over HTTP): bounded requests in flight, interactive work
ahead of a neighbour's bulk.

The backend is a loopback HTTP server speaking vLLM's /v1/embeddings protocol with a fixed service time per request
(vLLM itself needs a GPU); it records how many requests it holds at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from core.work import WorkClass, work_for
from embeddings.providers.registry import embedding_provider_for, providers_reset
from namespaces.models import Namespace

SERVICE_SECONDS = 0.1
DIM = 8


class Backend:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with backend.lock:
                    backend.in_flight += 1
                    backend.max_in_flight = max(backend.max_in_flight, backend.in_flight)
                time.sleep(SERVICE_SECONDS)  # a GPU's forward pass, however many texts
                with backend.lock:
                    backend.in_flight -= 1
                data = [
                    {"index": i, "embedding": [float(len(text))] + [1.0] * (DIM - 1)}
                    for i, text in enumerate(body["input"])
                ]
                payload = json.dumps({"data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def backend() -> Iterator[Backend]:
    served = Backend()
    yield served
    served.server.shutdown()


def remote(backend: Backend, name: str, max_concurrency: int) -> Namespace:
    providers_reset()
    return Namespace.objects.create(
        name=name,
        kind="single_vector",
        provider="vllm",
        model_id="stand-in",
        dim=DIM,
        max_tokens=512,
        batch_size=8,
        endpoint=backend.url,
        parameters={"max_concurrency": max_concurrency},
        allow_all_tenants=True,
    )


def flood_and_probe(namespace: Namespace) -> tuple[float, float]:
    """12 bulk requests of 64 texts from one tenant, then one interactive text of another: (its latency, bulk's)."""
    provider = embedding_provider_for(namespace)

    def bulk(index: int) -> None:
        with work_for(tenant="noisy", work_class=WorkClass.BULK):
            vectors = provider.embed([f"abstract {index} {i}" for i in range(64)], normalize=False, truncate=True)
            assert vectors.shape == (64, DIM)

    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(bulk, index) for index in range(12)]
        time.sleep(3 * SERVICE_SECONDS)  # the flood is queued and in flight
        with work_for(tenant="quiet", work_class=WorkClass.INTERACTIVE):
            clock = time.monotonic()
            vector = provider.embed(["aspirin"], normalize=False, truncate=True)
            probe = time.monotonic() - clock
        assert vector[0][0] == len("aspirin")  # its own vector, not a neighbour's
        for future in futures:
            future.result()
    return probe, time.monotonic() - started


@pytest.mark.django_db(transaction=True)
def test_the_scheduler_bounds_requests_in_flight_and_serves_a_single_text_within_two_passes(
    backend: Backend,
) -> None:
    probe, flood = flood_and_probe(remote(backend, "single_vector.remote-fair.8.v1", max_concurrency=2))
    assert backend.max_in_flight == 2
    # 12 x 64 texts in passes of 8 at 2 in flight: 48 service times; the single text waits for a pass in flight
    # to come back, then runs in the next one.
    assert flood > 40 * SERVICE_SECONDS
    assert probe < 4 * SERVICE_SECONDS, f"the interactive text waited {probe:.2f} s behind the bulk flood"


@pytest.mark.django_db(transaction=True)
def test_unscheduled_the_flood_reaches_the_backend_at_once(backend: Backend) -> None:
    """max_concurrency 0: each call goes straight through, as before the scheduler fronted remote providers."""
    probe, _ = flood_and_probe(remote(backend, "single_vector.remote-direct.8.v1", max_concurrency=0))
    # 12 threads of 8 sequential passes overlap almost fully; on a loaded 2-core runner a thread or two starts a
    # pass late (11 was seen in CI), so the assertion is "far past the scheduled bound of 2", not "exactly 12".
    assert backend.max_in_flight >= 8
    assert np.isfinite(probe)
