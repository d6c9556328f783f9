"""Start vLLM for vllm-qwen3 from config/embedding/vllm.yaml, the file medkg reads too.

    python3 serve.py [--print] [EXTRA VLLM ARGS...]

Runs inside the vLLM image (deploy/Dockerfile.vllm), which has PyYAML but not Django, so this
reads the file itself; tests/deploy/test_vllm_serve.py checks it agrees with
namespaces.config.load_vllm_config. GPU_MEMORY_UTILIZATION overrides the file, as it does there.
vLLM's own scheduler batches continuously: max_batch_size caps the sequences in flight
(--max-num-seqs); max_wait_time_ms and preferred_batch_size have no vLLM flag and are not passed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import yaml

DEFAULT_CONFIG = "/etc/medkg/config/embedding/vllm.yaml"


class ConfigProblem(ValueError):
    pass


def _field(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ConfigProblem(f"{dotted} is missing")
        value = value[part]
    return value


def vllm_arguments(data: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """The `vllm serve` command line for a parsed vllm.yaml."""
    model = str(_field(data, "service.model"))
    served_name = str(data["service"].get("served_model_name") or model)
    memory = environ.get("GPU_MEMORY_UTILIZATION", _field(data, "gpu_memory_utilization"))
    try:
        memory_fraction = float(memory)
    except (TypeError, ValueError) as error:
        raise ConfigProblem(f"gpu_memory_utilization must be a number, got {memory!r}") from error
    if not 0 < memory_fraction <= 1:
        raise ConfigProblem(f"gpu_memory_utilization must be in (0, 1], got {memory_fraction}")
    return [
        "vllm",
        "serve",
        model,
        "--runner",
        "pooling",  # an embedding model: pooled hidden states, no generation
        "--served-model-name",
        served_name,
        "--host",
        str(_field(data, "service.host")),
        "--port",
        str(int(_field(data, "service.port"))),
        "--dtype",
        str(_field(data, "dtype")),
        "--max-model-len",
        str(int(_field(data, "max_model_len"))),
        "--gpu-memory-utilization",
        str(memory_fraction),
        "--max-num-seqs",
        str(int(_field(data, "batching.max_batch_size"))),
    ]


def main(argv: list[str]) -> int:
    path = os.environ.get("MEDKG_VLLM_CONFIG", DEFAULT_CONFIG)
    print_only = "--print" in argv
    extra = [argument for argument in argv if argument != "--print"]
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        if not isinstance(data, Mapping):
            raise ConfigProblem("the file must be a mapping")
        command = vllm_arguments(data, os.environ) + extra
    except (OSError, yaml.YAMLError, ConfigProblem) as error:
        print(f"serve.py: {path}: {error}", file=sys.stderr)
        return 2
    if print_only:
        print(" ".join(command))
        return 0
    executable = shutil.which(command[0])
    if executable is None:
        print("serve.py: the vllm command is not installed in this image", file=sys.stderr)
        return 2
    os.execv(executable, command)  # noqa: S606 - replaces this process: vLLM gets the signals directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
