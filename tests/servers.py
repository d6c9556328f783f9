"""medkg as a real server process in tests: an isolated environment, a free port, health waits, a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Systems the test process points at (and make's own state): a server under test gets the embedded defaults.
_NOT_INHERITED = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "OPENSEARCH_URL",
    "VLLM_URL",
    "VLLM_API_KEY",
    "FAISS_DATA_DIR",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_environment(var_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus the test systems, with SQLite and FAISS under `var_dir`."""
    environment = {name: value for name, value in os.environ.items() if name not in _NOT_INHERITED}
    environment.update(
        MEDKG_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra
    )
    return environment


def manage(arguments: list[str], *, environment: dict[str, str]) -> str:
    """Run `manage.py ARGUMENTS` in `environment`; its stdout, or a test failure with its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(arguments)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def start(command: list[str], *, environment: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group (so `stop` reaches its children), output to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def log_tail(log_path: Path, characters: int = 6000) -> str:
    return log_path.read_text(errors="replace")[-characters:] if log_path.exists() else "(no output)"


def wait_for_health(base_url: str, *, process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> None:
    """Poll GET /health until it answers 200; fail with the server's output if it exits or `deadline` passes."""
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}) before /health answered 200:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/health", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            pytest.fail(f"{base_url}/health did not answer 200 in time; server output:\n{log_tail(log_path)}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the whole process group (make, gunicorn master and workers); kill what outlives the grace time."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a worker that outlived its master would keep the port
    process.wait(timeout=10)


@dataclass(frozen=True)
class LiveServer:
    url: str
    token: str  # a read+write token of the server's own tenant


def provisioned_token(environment: dict[str, str], tenant: str, ttl: str = "2h") -> str:
    """Migrate and sync the server's database, create `tenant` and return a read+write token of it."""
    manage(["migrate", "--noinput"], environment=environment)
    manage(["sync_namespaces"], environment=environment)
    manage(["create_tenant", tenant], environment=environment)
    return manage(["issue_token", "--tenant", tenant, "--ttl", ttl], environment=environment).strip()


@contextlib.contextmanager
def gunicorn_served(
    environment: dict[str, str], *, log_path: Path, token: str, threads: int = 8
) -> Iterator[LiveServer]:
    """medkg under gunicorn (gthread, one worker) until the block ends, once its /health answers 200."""
    port = free_port()
    command = [str(VENV_BIN / "gunicorn"), "medkg.wsgi:application", "--bind", f"127.0.0.1:{port}"]
    command += ["--worker-class", "gthread", "--workers", "1", "--threads", str(threads), "--timeout", "120"]
    process = start(command, environment=environment, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process=process, log_path=log_path, deadline=time.monotonic() + 180)
        yield LiveServer(url=url, token=token)
    finally:
        stop(process)
