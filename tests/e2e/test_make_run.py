"""`make run` on a fresh state really serves, and the curl line it prints answers with a MiniLM vector."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.servers import embedded_environment, free_port, log_tail, start, stop, wait_for_health

pytestmark = pytest.mark.slow

STARTUP_SECONDS = 180


def printed_curl(output: str) -> str | None:
    """The curl command that `make run` prints, with its continuation lines, once it is complete."""
    lines = output.splitlines()
    for first, line in enumerate(lines):
        if not line.lstrip().startswith("curl "):
            continue
        command = [line]
        while command[-1].endswith("\\") and first + len(command) < len(lines):
            command.append(lines[first + len(command)])
        return None if command[-1].endswith("\\") else "\n".join(command)
    return None


def wait_for_curl(log_path: Path, process: subprocess.Popen[bytes], deadline: float) -> str:
    while True:
        command = printed_curl(log_tail(log_path, characters=1_000_000))
        if command is not None:
            return command
        if process.poll() is not None:
            pytest.fail(f"make run exited ({process.returncode}) before printing a curl command:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"make run printed no curl command in {STARTUP_SECONDS} s:\n{log_tail(log_path)}")
        time.sleep(0.5)


def test_make_run_serves_the_printed_curl_command(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "make-run.log"
    # -o: the install step is `make install`'s job (make test runs it first); here it would reach PyPI.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", "HOST=127.0.0.1", f"PORT={port}"]
    process = start(command, environment=embedded_environment(tmp_path / "var"), log_path=log_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        curl = wait_for_curl(log_path, process, deadline)
        wait_for_health(f"http://127.0.0.1:{port}", process=process, log_path=log_path, deadline=deadline)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop(process)

    context = f"curl: {curl}\nexit {answer.returncode}, stdout:\n{answer.stdout}\nstderr:\n{answer.stderr}"
    context += f"\nmake run output:\n{log_tail(log_path)}"
    assert answer.returncode == 0, context
    try:
        body = json.loads(answer.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"the curl answer is not JSON\n{context}")
    assert body.get("namespace") == "single_vector.minilm.384.v1", context
    (embedding,) = body["embeddings"]
    vector = np.asarray(embedding["vector"], dtype=np.float64)
    assert vector.shape == (384,), context
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3, context
    assert (tmp_path / "var" / "medkg.sqlite3").exists()  # make run used the given MEDKG_VAR_DIR, not the repo's var/
