"""Tenant B's latency while tenant A (or nobody) attacks: loopback, bounded, against `make serve`.

Run from the repository root:

    .venv/bin/python bench/noisy_neighbour.py [--seconds 30] [--clients 8] [--rate 5]

The server is `make serve`'s command line on a free port with a throwaway SQLite database (the embedded
default, no Redis). Tenant B sends single-text /v1/embed and /v1/namespaces/{ns}/search at --rate requests
per second each, first alone (idle) and then while the attack runs. Printed per phase: B's p50/p99 and
errors. For the bad-token flood (--clients threads sending invalid bearer tokens as fast as they can for
--seconds): the attempts, how they were answered (401, 429), the refusal counter's growth on /metrics and
the rows the audit tables grew by.

Attacks of the issue not measured here yet: 3 clients of 256 long texts and 10 ingestion jobs of 200
abstracts need the fair scheduler, which is not built (the closing note says so).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def tenant_b_load(service: Service, token: str, seconds: float, rate: float) -> tuple[list[float], Counter[int]]:
    """B's steady traffic: alternate embed and search at `rate` per second; latencies in ms and statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    bodies = [
        ("/v1/embed", {"tenant_id": TENANT_B, "namespace": NAMESPACE, "texts": ["aspirin and platelets"]}),
        (f"/v1/namespaces/{NAMESPACE}/search", {"tenant_id": TENANT_B, "query": "insulin", "k": 5}),
    ]
    with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < seconds:
            path, body = bodies[sent % 2]
            began = time.perf_counter()
            try:
                status = client.post(path, json=body).status_code
            except httpx.HTTPError:
                status = 0
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[status] += 1
            sent += 1
            pause = started + sent / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    return latencies, statuses


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


def report(name: str, latencies: list[float], statuses: Counter[int]) -> None:
    errors = sum(count for status, count in statuses.items() if status != 200)
    print(
        f"  B {name:<16} requests {sum(statuses.values()):5d}  p50 {percentile(latencies, 0.5):7.1f} ms"
        f"  p99 {percentile(latencies, 0.99):7.1f} ms  errors {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=5.0, help="B's requests per second")
    arguments = parser.parse_args()

    # embed_throughput's server: `make serve`'s command line on a free port and a throwaway SQLite database.
    with service_running() as service:
        token = service.token
        tenant_b_load(service, token, 3, arguments.rate)  # warm-up, not counted
        print(f"noisy neighbour: B at {arguments.rate:g} req/s (embed and search alternating), loopback")
        idle = tenant_b_load(service, token, arguments.seconds, arguments.rate)
        report("idle", *idle)

        database = service.log_path.parent / "medkg.sqlite3"
        counted_before, rows_before = refusals_counted(service), audit_rows(database)
        result: dict[str, object] = {}
        flood = threading.Thread(
            target=lambda: result.update(answered=bad_token_flood(service, arguments.clients, arguments.seconds))
        )
        flood.start()
        during = tenant_b_load(service, token, arguments.seconds, arguments.rate)
        flood.join()
        time.sleep(1.5)  # the aggregate's last counts are written at most a second after they happen
        answered: Counter[int] = result["answered"]  # type: ignore[assignment]
        report("bad-token flood", *during)
        attempts = sum(answered.values())
        # One more refusal flushes the counts this process still holds (written at most once a second).
        httpx.post(f"{service.url}/v1/embed", headers={"Authorization": "Bearer x"}, json={}, timeout=30)
        time.sleep(0.2)
        counted = refusals_counted(service) - counted_before - 1
        events, windows, in_windows = (a - b for a, b in zip(audit_rows(database), rows_before, strict=True))
        print(
            f"  A bad-token flood: {arguments.clients} clients x {arguments.seconds:g} s, {attempts} attempts"
            f" ({attempts / arguments.seconds:.0f}/s), answered {dict(sorted(answered.items()))}"
        )
        print(f"    refusal counter grew by {counted:.0f} (attempts {attempts})")
        print(
            f"    audit rows: {events} one-by-one, {windows} aggregate rows holding {in_windows - 1} counted refusals"
        )
        print(f"    B p99 ratio flood / idle: {percentile(during[0], 0.99) / percentile(idle[0], 0.99):.2f}")


if __name__ == "__main__":
    main()
