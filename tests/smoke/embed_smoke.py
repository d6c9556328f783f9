#!/usr/bin/env python3
"""Staging smoke test of medkg (runbook: "Staging and production rollout"), against any base URL.

    python tests/smoke/embed_smoke.py --base-url https://embeddings.staging.example.org \
        --token "$TOKEN" --tenant smoke [--namespace single_vector.minilm.384.v1]

Checks, in order, each printed as a PASS/FAIL line: health, namespaces, embed, dimension, openai, ingest,
search, delete. The token needs embed:read and embed:write. The documents it indexes (ids smoke-<run>-N)
are deleted again whatever happens; use a tenant of its own (e.g. `smoke`). Python's standard library only,
so it runs from any machine with python3. Exit status: 0 when every check passes, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAMESPACE = "single_vector.minilm.384.v1"
# A query, a document that answers it and two that do not: the answer must rank first.
QUERY = "heart attack treatment"
DOCUMENTS = {
    "answer": "Myocardial infarction is treated with aspirin, reperfusion and beta-blockers.",
    "other-1": "Metformin lowers hepatic glucose production in type 2 diabetes.",
    "other-2": "Photosynthesis converts light energy into chemical energy in plants.",
}
EMBED_TEXTS = ["heart attack", "myocardial infarction", "photosynthesis in plants"]


class SmokeFailure(Exception):
    """A check failed; the message says what was expected and what came back."""


@dataclass
class Answer:
    status: int
    body: Any
    text: str


@dataclass
class Client:
    base_url: str
    token: str
    timeout: float

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise SmokeFailure(f"{method} {path}: no answer from {self.base_url}: {error}") from error
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = None
        return Answer(status, parsed, text)

    def expect(self, method: str, path: str, body: Any = None, *, status: int, auth: bool = True) -> Any:
        answer = self.request(method, path, body, auth=auth)
        if answer.status != status or not isinstance(answer.body, dict):
            raise SmokeFailure(
                f"{method} {path}: expected {status} with JSON, got {answer.status}: {answer.text[:300]}"
            )
        return answer.body


@dataclass
class Run:
    client: Client
    tenant: str
    namespace: str
    job_timeout: float
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    dim: int = 0
    normalized: bool = False
    vectors: list[list[float]] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)

    def document_id(self, key: str) -> str:
        return f"smoke-{self.run_id}-{key}"

    def documents_path(self) -> str:
        return f"/v1/namespaces/{urllib.parse.quote(self.namespace, safe='')}/documents"

    def wait_for_job(self, accepted: dict[str, Any]) -> dict[str, Any]:
        status_url = accepted.get("status_url") or f"/v1/jobs/{accepted.get('job_id')}"
        deadline = time.monotonic() + self.job_timeout
        while True:
            job = self.client.expect("GET", status_url, status=200)
            if job.get("status") == "succeeded":
                return job
            if job.get("status") == "failed":
                raise SmokeFailure(f"job {job.get('job_id')} failed: {job.get('error')}")
            if time.monotonic() > deadline:
                raise SmokeFailure(f"job {job.get('job_id')} still {job.get('status')} after {self.job_timeout:.0f} s")
            time.sleep(0.5)

    def search(self, k: int) -> list[dict[str, Any]]:
        path = f"/v1/namespaces/{urllib.parse.quote(self.namespace, safe='')}/search"
        body = self.client.expect(
            "POST", path, {"tenant_id": self.tenant, "query": QUERY, "k": k, "filters": {}}, status=200
        )
        hits = body.get("hits")
        if not isinstance(hits, list):
            raise SmokeFailure(f"search answered without a hits list: {str(body)[:300]}")
        return hits


def _cosine(left: list[float], right: list[float]) -> float:
    dot = sum(a * b for a, b in zip(left, right, strict=True))
    return dot / (math.sqrt(sum(a * a for a in left)) * math.sqrt(sum(b * b for b in right)))


def check_health(run: Run) -> str:
    body = run.client.expect("GET", "/health", status=200, auth=False)
    if body.get("status") != "healthy":
        raise SmokeFailure(f"/health says {body.get('status')!r}")
    ready = [entry["namespace"] for entry in body.get("providers", []) if entry.get("ready")]
    return f"healthy; providers ready: {', '.join(ready) or 'none'}"


def check_namespaces(run: Run) -> str:
    body = run.client.expect("GET", "/v1/namespaces", status=200)
    listed = {entry.get("name"): entry for entry in body.get("namespaces", [])}
    if run.namespace not in listed:
        raise SmokeFailure(f"{run.namespace} is not among the tenant's namespaces: {sorted(listed)}")
    run.dim = int(listed[run.namespace]["dim"])
    return f"{len(listed)} namespace(s); {run.namespace} has dim {run.dim}"


def check_embed(run: Run) -> str:
    body = run.client.expect(
        "POST", "/v1/embed", {"tenant_id": run.tenant, "namespace": run.namespace, "texts": EMBED_TEXTS}, status=200
    )
    vectors = [item["vector"] for item in body.get("embeddings", [])]
    if len(vectors) != len(EMBED_TEXTS):
        raise SmokeFailure(f"{len(EMBED_TEXTS)} texts gave {len(vectors)} vectors")
    run.normalized = bool(body.get("normalized"))
    run.vectors = vectors
    similar, unrelated = _cosine(vectors[0], vectors[1]), _cosine(vectors[0], vectors[2])
    if similar <= unrelated:
        raise SmokeFailure(
            f"'heart attack' is no closer to 'myocardial infarction' ({similar:.3f}) than to an "
            f"unrelated text ({unrelated:.3f}): the model answers noise"
        )
    return (
        f"{len(vectors)} vectors from {body.get('model')}; cos(similar) {similar:.3f} > cos(unrelated) {unrelated:.3f}"
    )


def check_dimension(run: Run) -> str:
    for index, vector in enumerate(run.vectors):
        if len(vector) != run.dim:
            raise SmokeFailure(f"vector {index} has {len(vector)} dimensions, the namespace {run.dim}")
        if not all(math.isfinite(value) for value in vector):
            raise SmokeFailure(f"vector {index} holds NaN or infinity")
        norm = math.sqrt(sum(value * value for value in vector))
        if run.normalized and abs(norm - 1.0) > 1e-3:
            raise SmokeFailure(f"vector {index} is marked normalized but has norm {norm:.4f}")
    return f"every vector has {run.dim} finite values" + (", unit norm" if run.normalized else "")


def check_openai(run: Run) -> str:
    body = run.client.expect(
        "POST",
        "/v1/embeddings",
        {"model": run.namespace, "input": EMBED_TEXTS[0], "encoding_format": "float"},
        status=200,
    )
    data = body.get("data") or [{}]
    length = len(data[0].get("embedding") or [])
    if length != run.dim:
        raise SmokeFailure(f"/v1/embeddings gave {length} dimensions, the namespace has {run.dim}")
    return f"OpenAI-compatible /v1/embeddings: {length} dimensions"


def check_ingest(run: Run) -> str:
    documents = [
        {"id": run.document_id(key), "text": text, "metadata": {"smoke_run": run.run_id, "key": key}}
        for key, text in DOCUMENTS.items()
    ]
    accepted = run.client.expect(
        "POST", run.documents_path(), {"tenant_id": run.tenant, "documents": documents}, status=202
    )
    run.indexed = [document["id"] for document in documents]
    job = run.wait_for_job(accepted)
    return f"job {job.get('job_id')} indexed {job.get('processed')}/{job.get('total')} documents"


def check_search(run: Run) -> str:
    hits = run.search(k=10)
    ours = [hit.get("id") for hit in hits if str(hit.get("id", "")).startswith(f"smoke-{run.run_id}-")]
    if not ours or ours[0] != run.document_id("answer"):
        raise SmokeFailure(f"expected {run.document_id('answer')} first among the smoke documents, got {ours}")
    return f"{len(hits)} hit(s); the answer ranks first among this run's documents (score {hits[0].get('score')})"


def check_delete(run: Run) -> str:
    accepted = run.client.expect(
        "DELETE", run.documents_path(), {"tenant_id": run.tenant, "ids": run.indexed}, status=202
    )
    run.wait_for_job(accepted)
    run.indexed = []
    left = [hit.get("id") for hit in run.search(k=10) if str(hit.get("id", "")).startswith(f"smoke-{run.run_id}-")]
    if left:
        raise SmokeFailure(f"deleted documents are still found: {left}")
    return "the smoke documents are deleted and no longer found"


CHECKS: list[tuple[str, Callable[[Run], str]]] = [
    ("health", check_health),
    ("namespaces", check_namespaces),
    ("embed", check_embed),
    ("dimension", check_dimension),
    ("openai", check_openai),
    ("ingest", check_ingest),
    ("search", check_search),
    ("delete", check_delete),
]


def run_checks(run: Run, out: Callable[[str], None] = print) -> bool:
    """Each check in order until one fails (later ones depend on it); indexed documents are always deleted."""
    failed = ""
    for name, check in CHECKS:
        if failed:
            out(f"[SKIP] {name}: not run after the failure of {failed}")
            continue
        try:
            out(f"[PASS] {name}: {check(run)}")
        except (SmokeFailure, KeyError, TypeError, ValueError) as error:
            failed = name
            out(f"[FAIL] {name}: {error}")
    if run.indexed:  # a failure left documents behind
        try:
            run.client.request("DELETE", run.documents_path(), {"tenant_id": run.tenant, "ids": run.indexed})
            out(f"cleanup: deletion of {len(run.indexed)} smoke document(s) requested")
        except SmokeFailure as error:
            out(f"cleanup: could not delete {run.indexed}: {error}")
    out("smoke test: every check passed" if not failed else f"smoke test FAILED at {failed}")
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000 (no trailing /v1)")
    parser.add_argument("--token", required=True, help="a JWT with embed:read and embed:write for --tenant")
    parser.add_argument("--tenant", required=True, help="the token's tenant (a tenant of its own is best)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=f"default {DEFAULT_NAMESPACE}")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="seconds an ingestion job may take")
    options = parser.parse_args(argv)
    client = Client(base_url=options.base_url.rstrip("/"), token=options.token, timeout=options.timeout)
    run = Run(client=client, tenant=options.tenant, namespace=options.namespace, job_timeout=options.job_timeout)
    print(f"medkg smoke test: {client.base_url}, tenant {run.tenant}, namespace {run.namespace}, run {run.run_id}")
    return 0 if run_checks(run, out=lambda line: print(line, flush=True)) else 1


if __name__ == "__main__":
    sys.exit(main())
