"""bench/load_test.py for a few seconds against a real server: it runs, and the service answers every request."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_a_short_load_test_has_no_errors_and_reports_p99():
    command = [sys.executable, "bench/load_test.py", "--duration", "5", "--rate", "10", "--clients", "4"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    assert "errors: 0" in result.stdout
    assert "requests: 50," in result.stdout
    assert " p99 " in result.stdout
