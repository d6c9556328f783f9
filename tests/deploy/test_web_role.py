"""The image's web role (`deploy/entrypoint.sh web`, gunicorn with deploy/gunicorn.conf.py) serving with the
production overlay's environment, as a pod behind the TLS-terminating ingress sees it.

The database is SQLite instead of the Secret's PostgreSQL URL; everything else is the overlay's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.environments import deployed_environment, manage
from tests.deploy.manifests import DEPLOY
from tests.servers import free_port, log_tail, start, stop, wait_for_health

pytestmark = pytest.mark.slow

HTTPS = {"X-Forwarded-Proto": "https"}  # what the ingress adds after terminating TLS


@dataclass
class Pod:
    url: str
    token: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    root = tmp_path_factory.mktemp("pod")
    port = free_port()
    environment = deployed_environment(
        "production",
        root,
        MEDKG_BIND=f"127.0.0.1:{port}",
        POD_IP="127.0.0.1",  # the address probes and scrapes use: here the loopback this pod listens on
        STATIC_ROOT=str(root / "static"),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    (Path(environment["DATABASE_URL_FILE"])).write_text(f"sqlite:///{root / 'pod.sqlite3'}")
    for arguments in (["collectstatic", "--noinput", "--verbosity", "0"], ["migrate", "--noinput"]):
        assert manage(arguments, environment).returncode == 0
    assert manage(["sync_namespaces"], environment).returncode == 0
    assert manage(["create_tenant", "acme"], environment).returncode == 0
    token = manage(["issue_token", "--tenant", "acme", "--ttl", "1h"], environment).stdout.strip()
    log = root / "web.log"
    process = start([str(DEPLOY / "entrypoint.sh"), "web"], environment=environment, log_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process=process, log_path=log, deadline=time.monotonic() + 180)
        yield Pod(url=url, token=token, port=port, process=process, log=log)
    finally:
        stop(process)


def test_probes_and_scrapes_speak_plain_http_to_the_pod_ip(pod: Pod) -> None:
    """Kubernetes probes and Prometheus come by pod IP (not in ALLOWED_HOSTS) over HTTP: served, not redirected."""
    health = httpx.get(f"{pod.url}/health", timeout=30)
    metrics = httpx.get(f"{pod.url}/metrics", timeout=30)

    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert metrics.status_code == 200 and "embedding_requests_total" in metrics.text


def test_the_api_over_plain_http_is_redirected_to_https(pod: Pod) -> None:
    answer = httpx.get(f"{pod.url}/v1/namespaces", headers={"Authorization": f"Bearer {pod.token}"}, timeout=30)

    assert answer.status_code == 301
    assert answer.headers["Location"] == f"https://127.0.0.1:{pod.port}/v1/namespaces"


def test_the_api_behind_the_tls_proxy_answers_with_hsts(pod: Pod) -> None:
    answer = httpx.get(
        f"{pod.url}/v1/namespaces", headers={"Authorization": f"Bearer {pod.token}", **HTTPS}, timeout=30
    )

    assert answer.status_code == 200
    assert "single_vector.minilm.384.v1" in {entry["name"] for entry in answer.json()["namespaces"]}
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_the_collected_static_files_are_served(pod: Pod) -> None:
    answer = httpx.get(f"{pod.url}/static/admin/css/base.css", headers=HTTPS, timeout=30)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/css")
    assert "max-age" in answer.headers.get("Cache-Control", "")


def test_an_unknown_host_is_refused(pod: Pod) -> None:
    answer = httpx.get(f"{pod.url}/health", headers={"Host": "evil.example.net"}, timeout=30)

    assert answer.status_code == 400


def test_sigterm_stops_the_pod_cleanly(pod: Pod) -> None:
    """What Kubernetes does at the end of the grace period's preStop: gunicorn finishes and exits 0."""
    os.killpg(pod.process.pid, signal.SIGTERM)
    try:
        code = pod.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not stop within 40 s of SIGTERM:\n{log_tail(pod.log)}")

    assert code == 0, log_tail(pod.log)
    assert "Shutting down: Master" in pod.log.read_text()
