"""Load test: medkg /v1/embed at a fixed request rate for a fixed time, on loopback. 0 errors is the goal.

Run from the repository root:

    .venv/bin/python bench/load_test.py [--duration 300] [--rate 30] [--clients 16] [--batch 1]

It starts the service as bench/embed_throughput.py does (`make serve`'s gunicorn command line on a free
loopback port, throwaway SQLite, the model preloaded, dynamic batching as configured), or uses a running
one (--url and --token). Requests are open-loop: request i is due at start + i / rate, whatever happened to
the earlier ones, so a slow server shows as latency and lateness instead of a lower offered rate. --clients
threads, each with its own keep-alive connection, take the due requests in turn; each sends --batch short
medical sentences and must get back as many 384-dimension vectors.

Printed: the offered and achieved rates, errors by kind, latency p50/p95/p99/max (from the moment a
request was sent) and how late requests were sent (a client was busy: the server did not keep up).
Exit status: 0 when there were no errors and the achieved rate is within 5% of --rate, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import numpy as np
import orjson
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed_throughput as throughput  # the sibling bench: same service, texts and checks

SEED = 20261125
DISTINCT_REQUESTS = 512


@dataclass
class LoadResult:
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def bodies_build(batch: int) -> tuple[list[bytes], int]:
    rng = Random(SEED)
    bodies = []
    for _ in range(DISTINCT_REQUESTS):
        texts = [throughput.short_text(rng) for _ in range(batch)]
        body = {"tenant_id": throughput.TENANT, "namespace": throughput.NAMESPACE, "texts": texts}
        bodies.append(orjson.dumps(body))
    return bodies, batch


def load_run(target: throughput.Target, *, rate: float, duration: float, clients: int, batch: int) -> LoadResult:
    bodies, expected = bodies_build(batch)
    total = int(rate * duration)
    result = LoadResult()
    lock = threading.Lock()
    next_index = [0]
    started = time.perf_counter()

    def client_loop() -> None:
        with target.client() as http:
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= total or throughput._stopping.is_set():
                    return
                due = started + index / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sent = time.perf_counter()
                problem = throughput.embed_once(http, target, bodies[index % len(bodies)], expected)
                done = time.perf_counter()
                with lock:
                    result.sent += 1
                    result.lateness.append(max(0.0, sent - due))
                    if problem:
                        result.errors[problem] += 1
                    else:
                        result.latencies.append(done - sent)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with tqdm(total=total, unit="req", file=sys.stderr, desc=f"{rate:g} req/s") as progress:
        while any(thread.is_alive() for thread in threads):
            time.sleep(1.0)
            with lock:
                progress.update(result.sent - progress.n)
                progress.set_postfix(errors=sum(result.errors.values()))
    result.seconds = time.perf_counter() - started
    return result


def report(result: LoadResult, arguments: argparse.Namespace) -> bool:
    def ms(values: list[float], percentile: float) -> str:
        return f"{np.percentile(values, percentile) * 1000:.1f}" if values else "-"

    achieved = result.sent / result.seconds if result.seconds else 0.0
    errors = sum(result.errors.values())
    print(
        f"load test: {arguments.duration:g} s at {arguments.rate:g} req/s offered, {arguments.clients} clients, "
        f"{arguments.batch} text(s) per request"
    )
    print(f"requests: {result.sent}, achieved {achieved:.1f} req/s, errors: {errors}")
    print(
        f"latency ms: p50 {ms(result.latencies, 50)}, p95 {ms(result.latencies, 95)}, "
        f"p99 {ms(result.latencies, 99)}, max {max(result.latencies, default=0) * 1000:.1f}"
    )
    print(f"sent late ms: p50 {ms(result.lateness, 50)}, p99 {ms(result.lateness, 99)}")
    for message, count in result.errors.most_common(10):
        print(f"ERROR x{count}: {message}", file=sys.stderr)
    return errors == 0 and achieved >= 0.95 * arguments.rate


@contextlib.contextmanager
def target_running(arguments: argparse.Namespace) -> Iterator[throughput.Target]:
    if arguments.url:
        headers = {"Authorization": f"Bearer {arguments.token}", "Content-Type": "application/json"}
        yield throughput.Target("medkg", arguments.url, "/v1/embed", headers, 0, throughput.response_problem)
        return
    print("starting the service (migrate, sync_namespaces, tenant, token, gunicorn) ...", file=sys.stderr)
    with throughput.service_running() as service:
        target = service.target()
        bodies, expected = bodies_build(arguments.batch)
        # Warm-up, not counted: connections, the batcher, the allocator.
        throughput.measure_http(target, bodies, [expected] * len(bodies), duration=2.0, clients=arguments.clients)
        yield target


def arguments_parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of load (default 300).")
    parser.add_argument("--rate", type=float, default=30.0, help="Requests per second offered (default 30).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent connections (default 16).")
    parser.add_argument("--batch", type=int, default=1, help="Texts per request (default 1).")
    parser.add_argument("--url", default="", help="A running medkg (loopback) instead of starting one.")
    parser.add_argument("--token", default="", help="Bearer token of tenant 'bench' for --url.")
    arguments = parser.parse_args()
    if arguments.duration <= 0 or arguments.rate <= 0 or arguments.clients < 1 or not 1 <= arguments.batch <= 256:
        parser.error("need --duration > 0, --rate > 0, --clients >= 1 and 1 <= --batch <= 256")
    if arguments.url and not arguments.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address: this load test never leaves the machine")
    return arguments


def main() -> int:
    arguments = arguments_parse()
    with target_running(arguments) as target:
        result = load_run(
            target, rate=arguments.rate, duration=arguments.duration, clients=arguments.clients, batch=arguments.batch
        )
    return 0 if report(result, arguments) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as error:
        print(f"load test failed: {error}", file=sys.stderr)
        sys.exit(1)
