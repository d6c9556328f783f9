"""Rollback, drill and triggers against a running server (gunicorn) while clients keep sending requests.

The vLLM backend of the seeded Qwen3 namespace is the stand-in server (tests/operations/vllm_standin.py),
a real OpenAI-protocol HTTP server with 4096-dimension vectors: vLLM itself needs a GPU, which this machine lacks.
The legacy namespace is the real all-MiniLM-L6-v2 in the server process. Management commands run as separate
processes on the server's database, as an operator would run them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.operations.conftest import MINILM, QWEN, VllmStandin
from tests.servers import REPO_ROOT, embedded_environment, free_port, gunicorn_served, provisioned_token, start, stop

pytestmark = pytest.mark.slow

DIMS = {QWEN: 4096, MINILM: 384}


@dataclass(frozen=True)
class Live:
    url: str
    token: str
    environment: dict[str, str]
    database: Path

    def rows(self, sql: str) -> list[sqlite3.Row]:
        with sqlite3.connect(self.database) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql).fetchall()

    def manage(self, *arguments: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=REPO_ROOT,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def live(vllm_standin_server: VllmStandin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    var_dir = tmp_path_factory.mktemp("live-ops")
    environment = embedded_environment(var_dir, VLLM_URL=vllm_standin_server.url, MEDKG_SERVING_STATE_TTL="1.0")
    token = provisioned_token(environment, "clinic", ttl="2h")
    served = {**environment, "MEDKG_PRELOAD_MODELS": "1"}
    with gunicorn_served(served, log_path=var_dir / "gunicorn.log", token=token) as server:
        yield Live(url=server.url, token=server.token, environment=environment, database=var_dir / "medkg.sqlite3")


@pytest.fixture
def vllm_up(vllm_standin_server: VllmStandin) -> Iterator[VllmStandin]:
    vllm_standin_server.start()
    yield vllm_standin_server
    vllm_standin_server.start()


@dataclass(frozen=True)
class Answer:
    sent: float
    done: float
    endpoint: str
    status: int
    namespace: str
    dim: int
    lengths: tuple[int, ...]
    error: str


class LoadLoop:
    """Clients sending embedding requests for the Qwen3 namespace (native and OpenAI) until stopped; bounded."""

    def __init__(self, live: Live, *, threads: int = 2, max_seconds: float = 240, max_requests: int = 4000) -> None:
        self.live = live
        self.answers: list[Answer] = []
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self.run, args=(index,), daemon=True) for index in range(threads)]

    def request(self, client: httpx.Client, endpoint: str, index: int) -> Answer:
        text = f"dabigatran reverses with idarucizumab {index}"
        sent = time.monotonic()
        if endpoint == "embed":
            response = client.post("/v1/embed", json={"namespace": QWEN, "texts": [text, "heparin"]})
        else:
            response = client.post("/v1/embeddings", json={"model": QWEN, "input": [text, "heparin"]})
        done = time.monotonic()
        if response.status_code != 200:
            return Answer(sent, done, endpoint, response.status_code, "", 0, (), response.text[:200])
        body = response.json()
        if endpoint == "embed":
            lengths = tuple(len(item["vector"]) for item in body["embeddings"])
            return Answer(sent, done, endpoint, 200, body["namespace"], body["dim"], lengths, "")
        lengths = tuple(len(item["embedding"]) for item in body["data"])
        return Answer(sent, done, endpoint, 200, body["model"], lengths[0], lengths, "")

    def run(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.live.token}"}
        with httpx.Client(base_url=self.live.url, headers=headers, timeout=60) as client:
            count = 0
            while not self.stop_event.is_set() and time.monotonic() < self.deadline and count < self.max_requests:
                endpoint = ("embed", "openai_embeddings")[(count + index) % 2]
                try:
                    self.answers.append(self.request(client, endpoint, count))
                except httpx.HTTPError as error:
                    self.answers.append(Answer(0, time.monotonic(), endpoint, 0, "", 0, (), repr(error)))
                count += 1

    def __enter__(self) -> LoadLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def wait_for(self, count: int, *, namespace: str, after: float, timeout: float = 60) -> None:
        """`count` answers from `namespace` to requests sent after `after`."""
        self._wait(lambda a: a.status == 200 and a.namespace == namespace, count, after, timeout, namespace)

    def wait_for_failures(self, count: int, *, after: float, timeout: float = 60) -> None:
        self._wait(lambda a: a.status != 200, count, after, timeout, "failed requests")

    def _wait(self, matches: Callable[[Answer], bool], count: int, after: float, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for answer in list(self.answers) if answer.sent >= after and matches(answer)) >= count:
                return
            time.sleep(0.05)
        pytest.fail(f"fewer than {count} answers ({what}) in {timeout} s: {self.answers[-3:]}")


def test_rollback_under_load_then_undo(live: Live, vllm_up: VllmStandin) -> None:
    with LoadLoop(live) as load:
        load.wait_for(6, namespace=QWEN, after=0)
        rollback_started = time.monotonic()
        result = live.manage(
            "rollback_embeddings", "--namespace", QWEN, "--to", MINILM, "--reason", "load", "--json",
            "--base-url", live.url,
        )  # fmt: skip
        rollback_returned = time.monotonic()
        event = json.loads(result.stdout)
        vllm_up.stop()  # the GPU server goes away, as `--kubectl` scales vllm-qwen3 to 0
        load.wait_for(10, namespace=MINILM, after=time.monotonic())
        vllm_up.start()
        undo_started = time.monotonic()
        live.manage("rollback_embeddings", "--undo", "--namespace", QWEN, "--reason", "vLLM back")
        undo_returned = time.monotonic()
        load.wait_for(6, namespace=QWEN, after=undo_returned)

    answers = load.answers
    failures = [answer for answer in answers if answer.status != 200]
    assert not failures, failures[:5]
    for answer in answers:  # every answer names its namespace, and its vectors have that namespace's dimension
        assert answer.dim == DIMS[answer.namespace] and set(answer.lengths) == {answer.dim}, answer
    before = {a.namespace for a in answers if a.done < rollback_started}
    during = {a.namespace for a in answers if rollback_returned <= a.sent and a.done < undo_started}
    after = {a.namespace for a in answers if a.sent >= undo_returned}
    assert (before, during, after) == ({QWEN}, {MINILM}, {QWEN})
    assert {a.endpoint for a in answers if a.namespace == MINILM} == {"embed", "openai_embeddings"}

    assert event["status"] == "active" and event["target_namespace"] == MINILM
    assert 0 < event["rto_seconds"] < rollback_returned - rollback_started
    [row] = live.rows(f"SELECT * FROM operations_rollbackevent WHERE id = {event['id']}")
    assert row["status"] == "undone" and row["restore_seconds"] > 0
    assert [step["name"] for step in json.loads(row["steps"])] == [
        "legacy_ready",
        "standby_state",
        "pause_ingestion",
        "switch_traffic",
        "drain",
    ]
    print(f"\nin-app rollback under load: RTO {event['rto_seconds']:.2f} s, restore {row['restore_seconds']:.2f} s, "
          f"{len(answers)} requests, 0 failed")  # fmt: skip
    assert not live.rows("SELECT * FROM operations_namespaceroute")
    [switch] = live.rows("SELECT paused FROM embeddings_ingestionswitch")
    assert switch["paused"] == 0


def test_drill_on_the_running_service_is_recorded_and_exported(
    live: Live, vllm_up: VllmStandin, tmp_path: Path
) -> None:
    result = live.manage("rollback_drill", "--environment", "staging", "--base-url", live.url)

    assert "passed" in result.stdout, result.stdout
    [drill] = live.rows("SELECT * FROM operations_rollbackdrill ORDER BY id DESC LIMIT 1")
    assert drill["environment"] == "staging" and drill["verdict"] == "passed" and drill["passed"] == 1
    assert 0 < drill["rto_seconds"] <= drill["full_seconds"] < drill["target_full_seconds"]
    assert drill["restore_seconds"] > 0 and drill["probes_sent"] >= 10 and drill["probes_failed"] == 0
    assert (drill["target_canary_seconds"], drill["target_full_seconds"], drill["max_seconds"]) == (300, 900, 1200)
    served = json.loads(drill["steps"])[-1]["served_by"]
    assert served[QWEN] > 0 and served[MINILM] > 0
    print(f"\ndrill: RTO {drill['rto_seconds']:.2f} s, full {drill['full_seconds']:.2f} s, "
          f"restore {drill['restore_seconds']:.2f} s, {drill['probes_sent']} probes")  # fmt: skip

    output = tmp_path / "rollback_drills.md"
    live.manage("export_drills", "--output", str(output))
    table = output.read_text()
    assert "| staging |" in table and f"{drill['rto_seconds']:.2f} s" in table and "| passed |" in table


def test_triggers_fire_when_vllm_goes_down_and_act_rolls_back(live: Live, vllm_up: VllmStandin) -> None:
    vllm_up.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the provider's readiness is cached for 5 s
        providers = httpx.get(f"{live.url}/health", timeout=10).json()["providers"]
        if not next(entry for entry in providers if entry["namespace"] == QWEN)["ready"]:
            break
        time.sleep(0.5)
    with LoadLoop(live, threads=1) as load:
        result = live.manage(
            "evaluate_rollback_triggers", "--base-url", live.url, "--interval", "3", "--act", "--json", expect=3
        )
        load.wait_for(4, namespace=MINILM, after=time.monotonic())

    results = {(item["trigger"], item["namespace"]): item for item in json.loads(result.stdout)}
    assert results[("gpu_failure_rate", QWEN)]["fired"] is True
    assert results[("vllm_availability", QWEN)]["fired"] is True and results[("vllm_availability", QWEN)]["value"] == 0
    assert (
        results[("latency_degradation", MINILM)]["fired"] is False
        if ("latency_degradation", MINILM) in results
        else True
    )
    [incident] = live.rows("SELECT * FROM operations_incident ORDER BY id DESC LIMIT 1")
    assert incident["namespace"] == QWEN and incident["status"] == "mitigated"
    assert incident["trigger"] in {"gpu_failure_rate", "vllm_availability"}
    [event] = live.rows(f"SELECT * FROM operations_rollbackevent WHERE id = {incident['rollback_event_id']}")
    assert event["status"] == "active" and event["trigger"] == incident["trigger"]
    assert incident["review_due_at"] is not None and "Post-incident review" in incident["body"]
    assert any(answer.status == 503 for answer in load.answers)  # before the rollback: gpu_unavailable

    vllm_up.start()
    live.manage("rollback_embeddings", "--undo", "--namespace", QWEN, "--reason", "vLLM back")


class HealthProbes:
    """GET /health once a second, as Kubernetes probes do (they refresh the readiness gauges)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/health", timeout=10)
            self.stop_event.wait(1.0)

    def __enter__(self) -> HealthProbes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture
def prometheus(live: Live, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's) scraping the live server every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus missing: apt-get install prometheus")
    httpx.get(f"{live.url}/health", timeout=30)  # fresh readiness gauges, as the kubelet's probes keep them
    port = free_port()
    target = live.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: medkg, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    command += [f"--web.listen-address=127.0.0.1:{port}"]
    log_path = tmp_path / "prometheus.log"
    process = start(command, environment=embedded_environment(tmp_path), log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                query = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="medkg"}'}, timeout=2).json()
                if query["data"]["result"] and query["data"]["result"][0]["value"][1] == "1":
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


def test_triggers_read_from_prometheus(live: Live, vllm_up: VllmStandin, prometheus: str) -> None:
    with HealthProbes(live.url), LoadLoop(live, threads=1) as load:
        time.sleep(6)  # a few scrapes of a healthy service
        healthy = live.manage("evaluate_rollback_triggers", "--prometheus-url", prometheus, "--json")
        vllm_up.stop()
        load.wait_for_failures(3, after=time.monotonic(), timeout=30)
        time.sleep(8)
        failing = live.manage("evaluate_rollback_triggers", "--prometheus-url", prometheus, "--json", expect=3)
    vllm_up.start()

    before = {(item["trigger"], item["namespace"]): item for item in json.loads(healthy.stdout)}
    after = {(item["trigger"], item["namespace"]): item for item in json.loads(failing.stdout)}
    assert not [key for key, item in before.items() if item["fired"]], before
    # No value where no failing series exists yet (PromQL's `/` matches series), else no new failures: 0.
    assert before.get(("gpu_failure_rate", QWEN), {"value": 0})["value"] == 0
    assert before[("vllm_availability", QWEN)]["source"] == "prometheus"
    assert before[("vllm_availability", QWEN)]["value"] == 1 and before[("vllm_availability", QWEN)]["fired"] is False
    assert after[("gpu_failure_rate", QWEN)]["fired"] is True and after[("gpu_failure_rate", QWEN)]["value"] > 0.05
    assert after[("vllm_availability", QWEN)]["fired"] is True
    assert not live.rows("SELECT * FROM operations_namespaceroute")  # without --act nothing is rolled back
