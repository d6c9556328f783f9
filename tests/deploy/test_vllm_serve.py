"""deploy/vllm/serve.py: the `vllm serve` command of vllm-qwen3, from the vllm.yaml medkg reads too.

vLLM itself cannot run here (no GPU, no vllm package): the command line is checked, not executed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from namespaces.config import load_namespace_specs, load_vllm_config
from tests.deploy.manifests import DEPLOY, REPO_ROOT

VLLM_YAML = REPO_ROOT / "config" / "embedding" / "vllm.yaml"
SERVE = DEPLOY / "vllm" / "serve.py"


def serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vllm_serve", SERVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(arguments: list[str]) -> dict[str, str]:
    return {arguments[i]: arguments[i + 1] for i in range(3, len(arguments) - 1, 2)}


@pytest.mark.parametrize("override", [None, "0.75"])
def test_the_command_carries_the_same_values_as_medkgs_loader(override: str | None) -> None:
    environ = {} if override is None else {"GPU_MEMORY_UTILIZATION": override}
    config = load_vllm_config(VLLM_YAML, environ=environ)

    arguments = serve_module().vllm_arguments(yaml.safe_load(VLLM_YAML.read_text()), environ)

    assert arguments[:3] == ["vllm", "serve", config.service.model]
    assert options(arguments) == {
        "--runner": "pooling",
        "--served-model-name": config.service.served_model_name or config.service.model,
        "--host": config.service.host,
        "--port": str(config.service.port),
        "--dtype": config.dtype,
        "--max-model-len": str(config.max_model_len),
        "--gpu-memory-utilization": str(config.gpu_memory_utilization),
        "--max-num-seqs": str(config.batching.max_batch_size),
    }


def test_medkg_asks_vllm_for_the_name_it_serves() -> None:
    served = yaml.safe_load(VLLM_YAML.read_text())["service"]["served_model_name"]
    vllm_namespaces = [
        spec
        for _, spec in load_namespace_specs(REPO_ROOT / "config" / "embedding" / "namespaces")
        if spec.provider == "vllm"
    ]

    assert vllm_namespaces
    assert {spec.parameters["served_model_name"] for spec in vllm_namespaces} == {served}
    assert all(spec.max_tokens <= yaml.safe_load(VLLM_YAML.read_text())["max_model_len"] for spec in vllm_namespaces)


def run_serve(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVE), *arguments],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_print_shows_the_command_with_extra_arguments() -> None:
    result = run_serve(
        "--print", "--enable-prefix-caching", MEDKG_VLLM_CONFIG=str(VLLM_YAML), GPU_MEMORY_UTILIZATION="0.8"
    )

    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen3-Embedding-8B"]
    assert options(command[:-1])["--gpu-memory-utilization"] == "0.8"
    assert command[-1] == "--enable-prefix-caching"


@pytest.mark.parametrize(
    ("content", "environment", "message"),
    [
        ("service: {host: 0.0.0.0}\n", {}, "service.model is missing"),
        (VLLM_YAML.read_text(), {"GPU_MEMORY_UTILIZATION": "lots"}, "gpu_memory_utilization must be a number"),
        (VLLM_YAML.read_text(), {"GPU_MEMORY_UTILIZATION": "1.5"}, "gpu_memory_utilization must be in (0, 1]"),
        ("- a list\n", {}, "the file must be a mapping"),
    ],
)
def test_a_bad_configuration_exits_2_naming_the_problem(
    content: str, environment: dict[str, str], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "vllm.yaml"
    path.write_text(content)

    result = run_serve("--print", MEDKG_VLLM_CONFIG=str(path), **environment)

    assert result.returncode == 2
    assert f"serve.py: {path}: {message}" in result.stderr


def test_without_vllm_installed_it_says_so() -> None:
    result = run_serve(MEDKG_VLLM_CONFIG=str(VLLM_YAML), PATH="/nonexistent")

    assert result.returncode == 2
    assert "the vllm command is not installed in this image" in result.stderr
