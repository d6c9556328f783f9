"""A migration's backfill against the raw model, and interactive /v1/embed while a backfill runs.

    python bench/backfill.py [--sizes 1000 5000] [--requests 300] [--loaded-passages 1000] [--chunk 500]
    python bench/backfill.py --smoke          # seconds: the suite runs this (tests/test_backfill_bench.py)

Everything runs in this one process, in the embedded mode (a throwaway SQLite database and FAISS folder, the
in-process MiniLM, ingestion on the process's ingestion thread), so both sides share the same cores:
- backfill: SciFact passages (title + " " + text) written into a fresh namespace of the same model as a stream of
  `documents_mirror(purpose=backfill)` calls of --chunk documents each, as a migration's backfill writes them, then
  embedded and indexed by the real ingestion jobs; timed from the first call until every job has succeeded,
  against the raw sentence-transformers `model.encode` of the same passages (batch 32, normalised, 256 tokens),
  called once on a worker thread as the ingestion thread calls the model. Goal: backfill >= 0.8 x raw. At each of
  --sizes, so that the cost per passage shows how it grows;
- interactive: single-text /v1/embed requests (SciFact claims) through DRF's APIClient with a JWT of the bench's
  tenant, one after another, on the idle process, then while a backfill of --loaded-passages runs on the
  ingestion thread: p50/p99 of both and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
# The embedded mode on a throwaway folder, before Django reads its settings: no outside database, cache or broker.
for _name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
    os.environ.pop(_name, None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
os.environ["MEDKG_INGESTION_LOCAL_MODE"] = "thread"
os.environ.setdefault("LOG_LEVEL", "WARNING")  # a line per job and request would bury the figures

from bench.embed_throughput import MAX_SEQ_LENGTH, encode, model_load  # noqa: E402  (sets the offline and OpenMP switches)

SCIFACT = REPO_ROOT.parent / "shared" / "eval" / "scifact"  # as bench/noisy_neighbour.py finds it
SOURCE = "single_vector.minilm.384.v1"
TENANT = "bench"
GOAL_RATIO = 0.8
POLL_SECONDS = 0.05


@dataclass
class BackfillRun:
    passages: int
    raw_seconds: float
    backfill_seconds: float
    indexed: int
    tokens: float  # mean tokens per passage after truncation: longer passages explain a higher cost per passage

    @property
    def ratio(self) -> float:
        """Backfill throughput over raw throughput (same passages): raw time over backfill time."""
        return self.raw_seconds / self.backfill_seconds


def scifact_passages(count: int) -> list[tuple[str, str]]:
    """(id, title + " " + text) of the first `count` corpus documents."""
    passages: list[tuple[str, str]] = []
    with (SCIFACT / "corpus.jsonl").open() as corpus:
        for line in corpus:
            record = json.loads(line)
            passages.append((str(record["_id"]), f"{record.get('title', '')} {record.get('text', '')}".strip()))
            if len(passages) == count:
                break
    if len(passages) < count:
        raise RuntimeError(f"{SCIFACT / 'corpus.jsonl'} holds {len(passages)} documents, {count} wanted")
    return passages


def scifact_claims(count: int) -> list[str]:
    with (SCIFACT / "queries.jsonl").open() as queries:
        claims = [json.loads(line)["text"] for line in queries]
    return [claims[index % len(claims)] for index in range(count)]


def percentile_ms(samples: Sequence[float], share: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, share)) if samples else float("nan")


def django_start(var_dir: Path) -> tuple[Any, str]:
    """Migrated database, seed namespaces, the bench's tenant; returns (tenant, its JWT)."""
    os.environ["MEDKG_VAR_DIR"] = str(var_dir)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from namespaces.services import namespace_sync_from_yaml, tenant_create, token_issue

    call_command("migrate", interactive=False, verbosity=0)
    namespace_sync_from_yaml(directory=settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces")
    tenant = tenant_create(slug=TENANT)[0]
    return tenant, token_issue(tenant=tenant, scopes=["embed:read", "embed:write"], ttl=timedelta(hours=2))


def target_namespace(version: int) -> Any:
    """A new version of the source namespace with identical settings: the target of a migration."""
    from namespaces.models import Namespace

    namespace = Namespace.objects.get(name=SOURCE)
    namespace.pk, namespace.name, namespace.source_file = None, f"single_vector.minilm.384.v{version}", ""
    namespace.save()
    return namespace


def backfill_start(*, namespace: Any, tenant: Any, passages: Sequence[tuple[str, str]], chunk: int) -> list[Any]:
    """Write the passages into `namespace` as a migration's backfill does: one uncharged mirror job per chunk."""
    from embeddings.ingestion import IncomingDocument, documents_mirror
    from embeddings.models import JobPurpose

    jobs = []
    for start in range(0, len(passages), chunk):
        documents = [IncomingDocument(id=id_, text=text, metadata={}) for id_, text in passages[start : start + chunk]]
        job = documents_mirror(namespace=namespace, tenant=tenant, documents=documents, purpose=JobPurpose.BACKFILL)
        jobs.append(job.pk)
    return jobs


def backfill_done(jobs: Sequence[Any]) -> tuple[bool, int]:
    """(every job finished, documents processed so far); a failed job stops the bench."""
    from embeddings.models import IngestionJob, JobStatus

    rows = list(IngestionJob.objects.filter(pk__in=jobs).values_list("status", "processed"))
    failed = [status for status, _ in rows if status == JobStatus.FAILED]
    if failed:
        raise RuntimeError(f"{len(failed)} backfill job(s) failed")
    return all(status == JobStatus.SUCCEEDED for status, _ in rows), sum(processed for _, processed in rows)


def backfill_wait(jobs: Sequence[Any], total: int, description: str) -> None:
    with tqdm(total=total, desc=description, unit="doc", file=sys.stderr) as progress:
        while True:
            finished, processed = backfill_done(jobs)
            progress.update(processed - progress.n)
            if finished:
                return
            time.sleep(POLL_SECONDS)


def indexed_count(namespace: Any) -> int:
    """Live documents of `namespace` whose current version the store holds."""
    from django.db.models import F

    from embeddings.models import Document

    return Document.objects.filter(namespace=namespace, deleted_at__isnull=True, indexed_version=F("version")).count()


def backfill_measure(
    *,
    model: Any,
    raw_thread: ThreadPoolExecutor,
    tenant: Any,
    passages: list[tuple[str, str]],
    version: int,
    chunk: int,
) -> BackfillRun:
    texts = [text for _, text in passages]
    print(f"raw encode of {len(texts)} passages ...", file=sys.stderr)
    started = time.perf_counter()
    raw_thread.submit(encode, model, texts).result()
    raw_seconds = time.perf_counter() - started

    namespace = target_namespace(version)
    started = time.perf_counter()
    jobs = backfill_start(namespace=namespace, tenant=tenant, passages=passages, chunk=chunk)
    backfill_wait(jobs, len(passages), f"backfill {len(passages)}")
    backfill_seconds = time.perf_counter() - started
    tokens = mean_tokens(model, texts)
    return BackfillRun(len(passages), raw_seconds, backfill_seconds, indexed_count(namespace), tokens)


def mean_tokens(model: Any, texts: list[str]) -> float:
    lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
    return float(np.mean(np.minimum(lengths, MAX_SEQ_LENGTH)))


def embed_latencies(client: Any, token: str, claims: Sequence[str], *, until: Any = None) -> list[float]:
    """One single-text /v1/embed after another; stops early once `until()` is true. A non-200 stops the bench."""
    samples = []
    for claim in claims:
        if until is not None and until():
            break
        body = {"tenant_id": TENANT, "namespace": SOURCE, "texts": [claim], "options": {"truncate": True}}
        started = time.perf_counter()
        response = client.post("/v1/embed", body, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"/v1/embed answered {response.status_code}: {response.content[:300]!r}")
    return samples


def interactive_measure(
    *, tenant: Any, token: str, passages: list[tuple[str, str]], requests: int, version: int, chunk: int
) -> tuple[list[float], list[float], bool]:
    """(idle latencies, latencies while the backfill ran, whether the backfill outlasted the loaded loop)."""
    from rest_framework.test import APIClient

    client = APIClient()
    claims = scifact_claims(requests)
    embed_latencies(client, token, claims[:20])  # warm-up: model, tokenizer, serving state, token checks
    idle = embed_latencies(client, token, tqdm(claims, desc="idle /v1/embed", file=sys.stderr))
    namespace = target_namespace(version)
    jobs = backfill_start(namespace=namespace, tenant=tenant, passages=passages, chunk=chunk)
    loaded = embed_latencies(
        client,
        token,
        tqdm(claims, desc="/v1/embed during backfill", file=sys.stderr),
        until=lambda: backfill_done(jobs)[0],
    )
    outlasted = not backfill_done(jobs)[0]
    backfill_wait(jobs, len(passages), "rest of the backfill")
    return idle, loaded, outlasted


def report(
    runs: list[BackfillRun], idle: list[float], loaded: list[float], outlasted: bool, torch_threads: int
) -> bool:
    """Print the figures and the goals; whether every backfill indexed all its passages."""
    print(
        f"\nbackfill through documents_mirror + ingestion jobs vs raw model.encode, {os.cpu_count()} CPUs, "
        f"torch threads {torch_threads}"
    )
    columns = [("passages", 8), ("raw s", 8), ("raw doc/s", 9), ("backfill s", 10), ("backfill doc/s", 14)]
    columns += [("backfill / raw", 14), ("ms/passage", 10), ("tokens/passage", 14), ("indexed", 8)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run.passages:>8} {run.raw_seconds:>8.1f} {run.passages / run.raw_seconds:>9.1f} "
            f"{run.backfill_seconds:>10.1f} {run.passages / run.backfill_seconds:>14.1f} {run.ratio:>14.3f} "
            f"{1000 * run.backfill_seconds / run.passages:>10.2f} {run.tokens:>14.1f} {run.indexed:>8}"
        )
    for small, large in itertools.pairwise(runs):
        # Linear cost: the time grows as the passages do (1.00 per passage); a write that rereads what is stored
        # would show as a growing cost per passage.
        growth = (large.backfill_seconds / small.backfill_seconds) / (large.passages / small.passages)
        raw_growth = (large.raw_seconds / small.raw_seconds) / (large.passages / small.passages)
        tokens = large.tokens / small.tokens
        print(
            f"cost growth {small.passages} -> {large.passages}: backfill {growth:.2f} per passage, raw "
            f"{raw_growth:.2f}, tokens per passage {tokens:.2f}"
        )
    idle_p99, loaded_p99 = percentile_ms(idle, 99), percentile_ms(loaded, 99)
    print(
        f"\nsingle-text /v1/embed (APIClient, in process): idle {len(idle)} requests p50 {percentile_ms(idle, 50):.1f} "
        f"ms p99 {idle_p99:.1f} ms; during backfill {len(loaded)} requests p50 {percentile_ms(loaded, 50):.1f} ms "
        f"p99 {loaded_p99:.1f} ms; p99 during backfill / idle {loaded_p99 / idle_p99:.2f}"
        + ("" if outlasted else " (the backfill finished before the loop: fewer loaded requests)")
    )
    largest = runs[-1]
    verdict = "ok" if largest.ratio >= GOAL_RATIO else "BELOW"
    print(
        f"\nGoals: backfill / raw at {largest.passages} passages {largest.ratio:.3f} (goal >= {GOAL_RATIO}) {verdict}"
    )
    return all(run.indexed == run.passages for run in runs)


def arguments_parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="Passages per backfill run.")
    parser.add_argument("--chunk", type=int, default=500, help="Documents per documents_mirror call (default 500).")
    parser.add_argument("--requests", type=int, default=300, help="Single-text /v1/embed requests per loop.")
    parser.add_argument(
        "--loaded-passages", type=int, default=1000, help="Passages backfilled during the loaded /v1/embed loop."
    )
    parser.add_argument("--smoke", action="store_true", help="A few dozen passages and requests: seconds.")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.sizes, arguments.chunk, arguments.requests, arguments.loaded_passages = [40, 80], 16, 30, 64
    if min(arguments.sizes) < 1 or arguments.chunk < 1 or arguments.requests < 1 or arguments.loaded_passages < 1:
        parser.error("--sizes, --chunk, --requests and --loaded-passages must be positive")
    return arguments


def main() -> int:
    arguments = arguments_parse()
    with tempfile.TemporaryDirectory(prefix="medkg-backfill-bench-") as temporary:
        tenant, token = django_start(Path(temporary))
        passages = scifact_passages(max(*arguments.sizes, arguments.loaded_passages))
        print("loading the raw model ...", file=sys.stderr)
        model = model_load()
        # The raw model runs on a worker thread, as the ingestion thread runs the service's (bench/embed_throughput.py).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-model") as raw_thread:
            raw_thread.submit(encode, model, [text for _, text in passages[:64]]).result()  # warm-up
            # Warm-up of the service's model and the ingestion thread, on a namespace of its own.
            jobs = backfill_start(namespace=target_namespace(98), tenant=tenant, passages=passages[:64], chunk=64)
            backfill_wait(jobs, 64, "warm-up")
            runs = [
                backfill_measure(
                    model=model,
                    raw_thread=raw_thread,
                    tenant=tenant,
                    passages=passages[:size],
                    version=2 + index,
                    chunk=arguments.chunk,
                )
                for index, size in enumerate(arguments.sizes)
            ]
        idle, loaded, outlasted = interactive_measure(
            tenant=tenant,
            token=token,
            passages=passages[: arguments.loaded_passages],
            requests=arguments.requests,
            version=2 + len(arguments.sizes),
            chunk=arguments.chunk,
        )
        import torch  # already loaded by sentence-transformers; only read

        complete = report(runs, idle, loaded, outlasted, torch.get_num_threads())
    return 0 if complete else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        sys.exit(1)
