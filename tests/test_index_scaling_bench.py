"""bench/index_scaling.py in its short mode: it runs end to end on the real store and its figures are sane."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.servers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_short_index_scaling_bench_prints_every_figure_and_the_goals():
    command = [sys.executable, "bench/index_scaling.py", "--smoke"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    out = result.stdout
    for figure in ("step / raw add", "refresh ms", "p99 while ingesting ms", "filtered p95 ms, recall", "disk MB"):
        assert out.count(figure) == 4, figure  # two sizes, two storage types
    recalls = [float(value) for value in re.findall(r"recall@10\s+([0-9.]+)", out)]
    assert len(recalls) == 4 and min(recalls) >= 0.9
    # A step writes its own size: the same bytes at both sizes (a rewrite would double them).
    written = [float(value) for value in re.findall(r"written per step KB\s+([0-9.]+)", out)]
    assert max(written) < 1.2 * min(written)
    assert "Goals:" in out and out.count("step cost") == 2
