"""Fixtures of the operations tests: a stand-in vLLM server (real HTTP, see vllm_standin.py) and clean serving state."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embeddings.providers.registry import providers_reset
from namespaces.models import Namespace
from operations.serving import serving_state_invalidate
from tests.servers import REPO_ROOT, free_port, log_tail, start, stop

QWEN = "single_vector.qwen3.4096.v1"
MINILM = "single_vector.minilm.384.v1"
STANDIN = REPO_ROOT / "tests" / "operations" / "vllm_standin.py"


@pytest.fixture(autouse=True)
def fresh_serving_state() -> Iterator[None]:
    """Routes and providers are cached per process: every test starts and ends without them."""
    serving_state_invalidate()
    providers_reset()
    yield
    serving_state_invalidate()
    providers_reset()


class VllmStandin:
    """The stand-in vLLM as its own process on a fixed port, which tests stop and start like a GPU node."""

    def __init__(self, log_path: Path, *, dim: int = 4096, model: str = "Qwen/Qwen3-Embedding-8B") -> None:
        self.port = free_port()
        self.log_path = log_path
        self.dim = dim
        self.model = model
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        command = [sys.executable, str(STANDIN), "--port", str(self.port), "--dim", str(self.dim)]
        command += ["--model", self.model]
        self.process = start(command, environment=dict(os.environ), log_path=self.log_path)
        deadline = time.monotonic() + 30
        while not self.up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the vLLM stand-in did not start:\n{log_tail(self.log_path)}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture(scope="session")
def vllm_standin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmStandin]:
    server = VllmStandin(tmp_path_factory.mktemp("vllm-standin") / "standin.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vllm(vllm_standin_server: VllmStandin) -> Iterator[VllmStandin]:
    """The stand-in, up at the start of the test and again at its end (a test may stop it)."""
    vllm_standin_server.start()
    yield vllm_standin_server
    vllm_standin_server.start()


@pytest.fixture
def qwen_served(synced: dict[str, Namespace], vllm: VllmStandin, monkeypatch: pytest.MonkeyPatch) -> VllmStandin:
    """The seeded Qwen3 namespace reaches the stand-in through VLLM_URL, as it reaches vLLM in production."""
    monkeypatch.setenv("VLLM_URL", vllm.url)
    return vllm
