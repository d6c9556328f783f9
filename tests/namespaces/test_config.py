"""Seed-file and vLLM config loaders: typed, validated, errors that name file, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.conf import settings

from core.errors import ConfigError
from namespaces.config import load_namespace_spec, load_namespace_specs, load_pyserini_config, load_vllm_config

SEED_DIR = settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces"
VLLM_FILE = settings.MEDKG_CONFIG_DIR / "embedding" / "vllm.yaml"


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def minilm_spec() -> dict:
    return yaml.safe_load((SEED_DIR / "single_vector.minilm.384.v1.yaml").read_text())


def test_shipped_seed_files_load():
    specs = {spec.name: spec for _, spec in load_namespace_specs(SEED_DIR)}
    assert {"single_vector.minilm.384.v1", "single_vector.qwen3.4096.v1"} <= set(specs)
    minilm = specs["single_vector.minilm.384.v1"]
    assert (minilm.provider, minilm.dim, minilm.max_tokens, minilm.requires_gpu) == (
        "sentence_transformers",
        384,
        256,
        False,
    )
    qwen = specs["single_vector.qwen3.4096.v1"]
    assert (qwen.provider, qwen.dim, qwen.requires_gpu, qwen.endpoint) == ("vllm", 4096, True, "${VLLM_URL}")
    assert qwen.matryoshka_dims == [32, 64, 128, 256, 512, 768, 1024, 2048]
    assert qwen.query_prompt.startswith("Instruct: ") and qwen.query_prompt.endswith("\nQuery: ")
    assert (qwen.document_prompt, minilm.query_prompt, minilm.document_prompt, minilm.matryoshka_dims) == (
        "",
        "",
        "",
        [],
    )


@pytest.mark.parametrize(
    ("change", "field", "reason_part"),
    [
        ({"name": "dense.minilm.384.v1"}, "name", "<kind>.<model>.<dim|auto>.<vN>"),
        ({"name": "single_vector.minilm.384.1"}, "name", "<kind>"),
        ({"dim": 768}, "(file)", "differs from the name"),
        ({"kind": "sparse"}, "(file)", "differs from the name"),
        ({"max_tokens": 0}, "max_tokens", "greater than 0"),
        ({"max_tokens": "many"}, "max_tokens", "integer"),
        ({"allowed_scopes": ["embed:everything"]}, "allowed_scopes", "unknown scopes"),
        ({"allowed_tenants": ["Bad Slug"]}, "allowed_tenants", "invalid tenant slugs"),
        ({"pooling": "median"}, "pooling", "Input should be"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
        ({"matryoshka_dims": [128, 384]}, "(file)", "between 1 and 383"),
        ({"matryoshka_dims": [0, 128]}, "(file)", "between 1 and 383"),
        ({"matryoshka_dims": [128, 128]}, "(file)", "unique"),
        ({"matryoshka_dims": ["128"]}, "matryoshka_dims.0", "integer"),
        ({"matryoshka_dims": [True]}, "matryoshka_dims.0", "integer"),
        ({"matryoshka_dims": 128}, "matryoshka_dims", "list"),
        ({"query_prompt": ["query: "]}, "query_prompt", "string"),
    ],
)
def test_bad_namespace_field_is_named(tmp_path, change, field, reason_part):
    path = write(tmp_path, "bad.yaml", {**minilm_spec(), **change})
    with pytest.raises(ConfigError) as raised:
        load_namespace_spec(path)
    assert raised.value.file == str(path)
    assert raised.value.field == field
    assert reason_part in raised.value.reason


def test_missing_required_field(tmp_path):
    spec = minilm_spec()
    del spec["provider"]
    with pytest.raises(ConfigError) as raised:
        load_namespace_spec(write(tmp_path, "x.yaml", spec))
    assert (raised.value.field, raised.value.reason) == ("provider", "Field required")


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_namespace_spec(write(tmp_path, "a.yaml", "name: [unclosed"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_namespace_spec(write(tmp_path, "b.yaml", "- a\n- b\n"))


def test_duplicate_names_across_files(tmp_path):
    write(tmp_path, "a.yaml", minilm_spec())
    write(tmp_path, "b.yaml", minilm_spec())
    with pytest.raises(ConfigError, match=r"also defined in a\.yaml"):
        load_namespace_specs(tmp_path)


def test_vllm_config_typed():
    config = load_vllm_config(VLLM_FILE, environ={})
    assert config.service.port == 8000
    assert 0 < config.gpu_memory_utilization <= 1
    assert config.batching.max_batch_size >= config.batching.preferred_batch_size
    assert config.health_check.path == "/health"
    assert config.dtype in {"auto", "float16", "bfloat16", "float32"}


def test_vllm_gpu_memory_env_override():
    assert load_vllm_config(VLLM_FILE, environ={"GPU_MEMORY_UTILIZATION": "0.55"}).gpu_memory_utilization == 0.55


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "lots"])
def test_vllm_gpu_memory_env_override_validated(value):
    with pytest.raises(ConfigError) as raised:
        load_vllm_config(VLLM_FILE, environ={"GPU_MEMORY_UTILIZATION": value})
    assert raised.value.file == "GPU_MEMORY_UTILIZATION"
    assert raised.value.field == "gpu_memory_utilization"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("gpu_memory_utilization",), 1.2, "gpu_memory_utilization"),
        (("batching", "preferred_batch_size"), 1000, "batching"),
        (("service", "port"), 70000, "service.port"),
        (("dtype",), "int3", "dtype"),
        (("max_model_len",), -1, "max_model_len"),
    ],
)
def test_vllm_config_errors_name_the_field(tmp_path, path, value, field):
    data = yaml.safe_load(VLLM_FILE.read_text())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    bad = write(tmp_path, "vllm.yaml", data)
    with pytest.raises(ConfigError) as raised:
        load_vllm_config(bad, environ={})
    assert raised.value.file == str(bad)
    assert raised.value.field == field


PYSERINI_FILE = settings.MEDKG_CONFIG_DIR / "embedding" / "pyserini.yaml"


def test_pyserini_config_typed():
    config = load_pyserini_config(PYSERINI_FILE)
    assert config.model.path == "package:cognition/model"
    assert config.expansion.doc_side.top_k_terms == 400
    assert (config.opensearch.rank_features_field, config.opensearch.max_weight) == ("splade_terms", 10)
    assert (config.bm25.k1, config.bm25.b, config.impact.quantization_scale) == (0.9, 0.4, 100)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("opensearch", "rank_features_field"), "splade.terms", "opensearch.rank_features_field"),
        (("opensearch", "rank_features_field"), "Splade", "opensearch.rank_features_field"),
        (("opensearch", "max_weight"), 0, "opensearch.max_weight"),
        (("expansion", "doc_side", "top_k_terms"), 0, "expansion.doc_side.top_k_terms"),
        (("expansion", "query_side", "min_weight"), -0.5, "expansion.query_side.min_weight"),
        (("expansion", "doc_side", "top_k"), 10, "expansion.doc_side.top_k"),  # a misspelt key is not ignored
        (("model", "path"), "", "model.path"),
        (("bm25", "b"), 1.5, "bm25.b"),
        (("impact", "quantization_scale"), 0, "impact.quantization_scale"),
    ],
)
def test_pyserini_config_errors_name_the_file_and_field(tmp_path, path, value, field):
    data = yaml.safe_load(PYSERINI_FILE.read_text())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    bad = write(tmp_path, "pyserini.yaml", data)
    with pytest.raises(ConfigError) as raised:
        load_pyserini_config(bad)
    assert raised.value.file == str(bad)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("model: [unclosed", "(file)"),
        ("- a list", "(file)"),
        ("model: {path: x}\nexpansion: {doc_side: {}, query_side: {}}\n", "opensearch"),
    ],
)
def test_pyserini_config_rejects_unreadable_or_incomplete_files(tmp_path, content, field):
    bad = write(tmp_path, "pyserini.yaml", content)
    with pytest.raises(ConfigError) as raised:
        load_pyserini_config(bad)
    assert raised.value.field == field
    with pytest.raises(ConfigError, match="cannot be read"):
        load_pyserini_config(tmp_path / "missing.yaml")


def test_sparse_namespaces_take_neither_prompts_nor_matryoshka_sizes(tmp_path):
    spec = yaml.safe_load((SEED_DIR / "sparse.bm25.auto.v1.yaml").read_text())
    for change, reason_part in [
        ({"query_prompt": "query: "}, "dense namespaces"),
        ({"matryoshka_dims": [8]}, "needs a namespace dimension"),
    ]:
        with pytest.raises(ConfigError) as raised:
            load_namespace_spec(write(tmp_path, "sparse.yaml", {**spec, **change}))
        assert reason_part in raised.value.reason
