"""bench/backfill.py in its short mode: a backfill through the real ingestion jobs and /v1/embed beside it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.servers import REPO_ROOT

pytestmark = pytest.mark.slow

SCIFACT = REPO_ROOT.parent / "shared" / "eval" / "scifact" / "corpus.jsonl"


@pytest.mark.skipif(not SCIFACT.exists(), reason=f"SciFact missing: {SCIFACT}")
def test_the_short_backfill_bench_indexes_every_passage_and_prints_the_ratios():
    command = [sys.executable, "bench/backfill.py", "--smoke"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    out = result.stdout
    # Each size: every passage indexed in the target namespace (the last column), with its ratio to raw.
    row = r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\d+)$"
    rows = re.findall(row, out, re.MULTILINE)
    assert [(int(size), int(indexed)) for size, _, indexed in rows] == [(40, 40), (80, 80)]
    assert all(float(ratio) > 0 for _, ratio, _ in rows)
    assert "cost growth 40 -> 80" in out
    assert re.search(r"idle 30 requests .* p99 [\d.]+ ms; during backfill \d+ requests .* p99 [\d.]+ ms", out)
    assert "p99 during backfill / idle" in out
    assert "Goals: backfill / raw at 80 passages" in out
