"""One `make run` server for the session: what a user gets on a fresh checkout, shared by the API-page and
smoke tests (its tenant `demo` and the token `make run` prints)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import embedded_environment, free_port, log_tail, start, stop, wait_for_health

STARTUP_SECONDS = 240


@dataclass(frozen=True)
class MakeRunServer:
    url: str
    token: str
    tenant: str
    log: Path


def _printed_token(log: Path) -> str | None:
    match = re.search(r"export TOKEN=(\S+)", log_tail(log, characters=1_000_000))
    return match[1] if match else None


@pytest.fixture(scope="session")
def make_run_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRunServer]:
    root = tmp_path_factory.mktemp("make-run")
    port = free_port()
    log = root / "make-run.log"
    # -o: installing is `make install`'s job (make test runs it first); here it would reach PyPI.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", "HOST=127.0.0.1", f"PORT={port}"]
    process = start(command, environment=embedded_environment(root / "var"), log_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        wait_for_health(url, process=process, log_path=log, deadline=deadline)
        token = _printed_token(log)
        assert token, f"make run printed no token:\n{log_tail(log)}"
        yield MakeRunServer(url=url, token=token, tenant="demo", log=log)
    finally:
        stop(process)
