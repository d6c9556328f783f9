"""Every curl and Python example of docs/api.md, run as written against `make run`'s server; each documented
answer is compared with the real one, key for key (values differ: ids, vectors, times)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from tests.deploy.live import MakeRunServer
from tests.deploy.manifests import REPO_ROOT
from tests.servers import log_tail

pytestmark = pytest.mark.slow

DOCUMENTED_BASE_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    section: str
    language: str
    code: str
    documented_answer: str | None  # the ```json block right after a bash example


def examples() -> list[Example]:
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    found: list[Example] = []
    blocks = list(BLOCK.finditer(text))
    for index, block in enumerate(blocks):
        language, code = block[1], block[2]
        runnable = (language == "bash" and "curl " in code) or language == "python"
        if not runnable:
            continue
        section = re.findall(r"^## (.+)$", text[: block.start()], flags=re.MULTILINE)[-1]
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        adjacent = (
            following is not None and following[1] == "json" and not text[block.end() : following.start()].strip()
        )
        found.append(Example(section, language, code, following[2] if adjacent and following else None))
    return found


def documented(answer: str) -> Any:
    """The documented JSON, its `...` ellipses (more of the same) removed."""
    return json.loads(re.sub(r",\s*\.\.\.", "", answer).replace('"..."', '""'))


DATA_MAPS = {"terms"}  # objects whose keys are data (a sparse vector's terms), not part of the answer's shape


def shape(value: Any) -> Any:
    """Keys of an object and of the first object of each list in it: the answer's shape, not its values."""
    if isinstance(value, dict):
        return {
            key: shape(item) if key not in DATA_MAPS else "map"
            for key, item in value.items()
            if isinstance(item, dict | list)
        } | {key: None for key, item in value.items() if not isinstance(item, dict | list)}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [shape(value[0])]
    return None


EXAMPLES = examples()


def test_the_api_page_has_examples_for_every_endpoint() -> None:
    sections = {example.section for example in EXAMPLES}

    assert len(EXAMPLES) >= 10
    for endpoint in ("POST /v1/embed", "POST /v1/embeddings (OpenAI-compatible)", "GET /v1/namespaces", "GET /health"):
        assert endpoint in sections
    assert {"bash", "python"} == {example.language for example in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{i}-{e.section}" for i, e in enumerate(EXAMPLES)])
def test_the_example_runs_as_documented(example: Example, make_run_server: MakeRunServer) -> None:
    code = example.code.replace(DOCUMENTED_BASE_URL, make_run_server.url)
    environment = {**os.environ, "TOKEN": make_run_server.token}
    command = ["bash", "-euo", "pipefail", "-c", code] if example.language == "bash" else [sys.executable, "-c", code]

    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, (
        f"{example.code}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}\n"
        f"server log:\n{log_tail(make_run_server.log, characters=4000)}"
    )
    if example.language == "python":
        assert result.stdout.split() == ["2", "384"]
        return
    answer = json.loads(result.stdout)
    assert not isinstance(answer.get("error"), dict), answer  # a job's own "error" is a string
    if example.documented_answer is not None:
        assert shape(answer) == shape(documented(example.documented_answer))
