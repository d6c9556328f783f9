"""Typed, validated loaders for config/embedding/*.yaml.

Every error is a ConfigError naming the file, the field and the reason, so an
operator can fix a seed file without reading code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from namespaces.models import (
    ALIAS_NAME_PATTERN,
    NAMESPACE_NAME_PATTERN,
    SCOPES,
    TENANT_SLUG_PATTERN,
    matryoshka_dims_problem,
    reranker_fields_problem,
)

VECTOR_STORAGES = ("float32", "float16", "sq8")  # the embedded FAISS store's (embeddings.stores.faiss)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NamespaceSpec(_Strict):
    name: str
    kind: Literal["single_vector", "sparse", "multi_vector", "reranker"]
    provider: str = Field(min_length=1)
    model_id: str = Field(min_length=1)
    model_path: str = ""
    model_version: str = ""
    dim: int | None = Field(default=None, gt=0)
    max_tokens: int = Field(gt=0)
    tokenizer: str = ""
    pooling: Literal["mean", "cls", "last_token", "max", "none"] = "mean"
    normalize: bool = True
    batch_size: int = Field(default=32, gt=0, le=4096)
    requires_gpu: bool = False
    endpoint: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    matryoshka_dims: list[StrictInt] = Field(default_factory=list)  # smaller sizes a request may ask for, each < dim
    query_prompt: str = ""  # prepended to queries before embedding (dense)
    document_prompt: str = ""  # prepended to documents before embedding (dense)
    fallback: str = ""  # namespace that answers while this one's provider is down (same dimension only)
    standby: str = ""  # namespace that receives every document written here (the rollback target), same kind
    aliases: list[str] = Field(default_factory=list)  # stable names created pointing here when they do not exist
    enabled: bool = True
    allowed_scopes: list[str] = Field(default_factory=lambda: ["embed:read", "embed:write"])
    allowed_tenants: Literal["all"] | list[str] = "all"
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not NAMESPACE_NAME_PATTERN.match(value):
            raise ValueError("must look like <kind>.<model>.<dim|auto>.<vN>, e.g. single_vector.minilm.384.v1")
        return value

    @field_validator("fallback", "standby")
    @classmethod
    def _fallback_shape(cls, value: str) -> str:
        if value and not NAMESPACE_NAME_PATTERN.match(value):
            raise ValueError("must name a namespace, e.g. single_vector.minilm.384.v1")
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not ALIAS_NAME_PATTERN.match(name) or NAMESPACE_NAME_PATTERN.match(name)]
        if bad:
            raise ValueError(f"{bad} cannot be aliases: dot-separated lowercase parts, not a namespace version")
        return value

    @field_validator("allowed_scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
        return value

    @field_validator("allowed_tenants")
    @classmethod
    def _tenant_slugs(cls, value: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if isinstance(value, list):
            bad = [slug for slug in value if not re.match(TENANT_SLUG_PATTERN, slug)]
            if bad:
                raise ValueError(f"invalid tenant slugs {bad}")
        return value

    @field_validator("parameters")
    @classmethod
    def _known_storage(cls, value: dict[str, Any]) -> dict[str, Any]:
        storage = value.get("vector_storage", "float32")
        if storage not in VECTOR_STORAGES:
            raise ValueError(f"vector_storage {storage!r} is not one of {list(VECTOR_STORAGES)}")
        keys = value.get("filterable_metadata", [])
        if not isinstance(keys, list) or not all(isinstance(key, str) and key and "__" not in key for key in keys):
            raise ValueError("filterable_metadata must be a list of top-level metadata keys, e.g. [source, year]")
        return value

    @model_validator(mode="after")
    def _name_matches_fields(self) -> NamespaceSpec:
        match = NAMESPACE_NAME_PATTERN.match(self.name)
        assert match is not None  # checked by the field validator
        if match["kind"] != self.kind:
            raise ValueError(f"kind {self.kind!r} differs from the name's {match['kind']!r}")
        if match["dim"] != "auto" and int(match["dim"]) != self.dim:
            raise ValueError(f"dim {self.dim} differs from the name's {match['dim']}")
        if self.kind == "reranker":
            refused = reranker_fields_problem(
                dim=self.dim,
                prompts=bool(self.query_prompt or self.document_prompt),
                matryoshka=bool(self.matryoshka_dims),
            )
            if refused:
                raise ValueError(f"{refused[0]}: {refused[1]}")
        elif self.kind != "sparse" and self.dim is None:
            raise ValueError("dim is required for dense namespaces")
        problem = matryoshka_dims_problem(self.matryoshka_dims, self.dim)
        if problem:
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims}: {problem}")
        if self.kind == "sparse" and (self.query_prompt or self.document_prompt):
            raise ValueError("query_prompt and document_prompt are for dense namespaces")
        if self.standby == self.name:
            raise ValueError("a namespace cannot be its own standby")
        return self


def first_error(error: ValidationError) -> tuple[str, str]:
    """The dotted field and the reason of a pydantic error's first entry."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(file)"
    return field, first["msg"]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(str(path), "(file)", f"cannot be read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(str(path), "(file)", f"is not valid YAML: {error}") from error


Model = TypeVar("Model", bound=BaseModel)


def config_load(path: Path, model: type[Model], *, shape: str) -> Model:
    """A YAML mapping validated by `model`; a ConfigError names the file, the dotted field and the reason."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), "(file)", f"must be a {shape}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        field, reason = first_error(error)
        raise ConfigError(str(path), field, reason) from error


def load_namespace_spec(path: Path) -> NamespaceSpec:
    return config_load(path, NamespaceSpec, shape="mapping of namespace fields")


def load_namespace_specs(directory: Path) -> list[tuple[Path, NamespaceSpec]]:
    """All namespace seed files of `directory`, validated; the first bad file raises."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "(directory)", "does not exist")
    loaded: list[tuple[Path, NamespaceSpec]] = []
    seen: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        spec = load_namespace_spec(path)
        if spec.name in seen:
            raise ConfigError(str(path), "name", f"{spec.name!r} is also defined in {seen[spec.name].name}")
        seen[spec.name] = path
        loaded.append((path, spec))
    return loaded


# --- vLLM serving configuration -------------------------------------------------


class VllmService(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(gt=0, lt=65536)
    model: str = Field(min_length=1)
    served_model_name: str = ""


class VllmBatching(_Strict):
    max_batch_size: int = Field(gt=0)
    max_wait_time_ms: float = Field(ge=0)
    preferred_batch_size: int = Field(gt=0)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> VllmBatching:
        if self.preferred_batch_size > self.max_batch_size:
            raise ValueError("preferred_batch_size must not exceed max_batch_size")
        return self


class VllmHealthCheck(_Strict):
    path: str = "/health"
    interval_seconds: float = Field(default=10, gt=0)
    timeout_seconds: float = Field(default=2, gt=0)
    failure_threshold: int = Field(default=3, gt=0)


class VllmConfig(_Strict):
    service: VllmService
    gpu_memory_utilization: float = Field(gt=0, le=1)
    max_model_len: int = Field(gt=0)
    dtype: Literal["auto", "float16", "bfloat16", "float32"]
    batching: VllmBatching
    health_check: VllmHealthCheck = VllmHealthCheck()


def load_vllm_config(path: Path, environ: dict[str, str] | None = None) -> VllmConfig:
    """Parse config/embedding/vllm.yaml; GPU_MEMORY_UTILIZATION in the environment overrides the file."""
    environ = dict(os.environ) if environ is None else environ
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), "(file)", "must be a mapping")
    override = environ.get("GPU_MEMORY_UTILIZATION")
    if override is not None:
        try:
            data["gpu_memory_utilization"] = float(override)
        except ValueError as error:
            raise ConfigError("GPU_MEMORY_UTILIZATION", "gpu_memory_utilization", "must be a number") from error
    try:
        return VllmConfig.model_validate(data)
    except ValidationError as error:
        field, reason = first_error(error)
        source = "GPU_MEMORY_UTILIZATION" if field == "gpu_memory_utilization" and override is not None else str(path)
        raise ConfigError(source, field, reason) from error


# --- Pyserini / SPLADE settings -------------------------------------------------

_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


class PyseriniModel(_Strict):
    path: str = Field(min_length=1)  # a local folder or package:NAME/sub/folder; a namespace's model_path wins
    version: str = ""


class ExpansionSide(_Strict):
    top_k_terms: int | None = Field(default=None, gt=0, le=30522)  # None keeps every positive term
    min_weight: float = Field(default=0.0, ge=0)  # weights at or below this are dropped


class PyseriniExpansion(_Strict):
    doc_side: ExpansionSide
    query_side: ExpansionSide


class PyseriniOpenSearch(_Strict):
    rank_features_field: str
    max_weight: float = Field(gt=0)  # term weights are clipped to this before indexing and querying

    @field_validator("rank_features_field")
    @classmethod
    def _field_name(cls, value: str) -> str:
        if not _FIELD_NAME.match(value):
            raise ValueError("must be a lowercase field name: letters, digits and '_' (no dots)")
        return value


class PyseriniBm25(_Strict):
    k1: float = Field(default=0.9, gt=0)
    b: float = Field(default=0.4, ge=0, le=1)


class PyseriniImpact(_Strict):
    # Lucene impact indexes keep integer term frequencies: weights are multiplied by this and rounded.
    quantization_scale: int = Field(default=100, gt=0, le=10_000)


class PyseriniConfig(_Strict):
    model: PyseriniModel
    expansion: PyseriniExpansion
    opensearch: PyseriniOpenSearch
    bm25: PyseriniBm25 = PyseriniBm25()
    impact: PyseriniImpact = PyseriniImpact()


def load_pyserini_config(path: Path) -> PyseriniConfig:
    """Parse config/embedding/pyserini.yaml; errors name the file and the field."""
    return config_load(path, PyseriniConfig, shape="mapping with model, expansion and opensearch")


_pyserini_cache: dict[tuple[str, int], PyseriniConfig] = {}


def pyserini_config() -> PyseriniConfig:
    """The deployment's pyserini.yaml (MEDKG_CONFIG_DIR), re-read when the file changes."""
    from django.conf import settings

    path = Path(settings.MEDKG_CONFIG_DIR) / "embedding" / "pyserini.yaml"
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = (str(path), 0)
    if key not in _pyserini_cache:
        _pyserini_cache.clear()
        _pyserini_cache[key] = load_pyserini_config(path)
    return _pyserini_cache[key]
