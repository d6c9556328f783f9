"""Pluggable backends import lazily and fail with the project's error, naming what is missing."""

from __future__ import annotations

import pytest

from core.backends import backend_class
from core.errors import BackendUnavailable
from embeddings.providers.registry import provider_class
from embeddings.stores.registry import store_class


def test_unknown_and_uninstalled_backends_are_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="Unknown vector store 'milvus'"):
        store_class("milvus")
    with pytest.raises(BackendUnavailable) as error:
        backend_class({"gpu": "vllm_not_installed_here.Engine"}, "gpu", kind="provider")
    assert error.value.details == {
        "provider": "gpu",
        "package": "vllm_not_installed_here",
        "requirements": "requirements.txt",
    }


def test_a_missing_optional_package_names_the_requirements_file_that_installs_it() -> None:
    with pytest.raises(BackendUnavailable) as error:
        backend_class({"gpu": "vllm.not_here.Engine"}, "gpu", kind="provider")
    assert error.value.details["requirements"] == "requirements-gpu.txt"
    assert "pip install -r requirements-gpu.txt -c constraints.txt" in error.value.message
    with pytest.raises(BackendUnavailable) as error:
        backend_class({"bm25": "pyserini.not_here.Searcher"}, "bm25", kind="provider")
    assert "requirements-sparse.txt" in error.value.message


def test_registered_backends_resolve_to_their_classes() -> None:
    assert store_class("faiss").__name__ == "FaissStore"
    assert store_class("opensearch").__name__ == "OpenSearchStore"
    assert provider_class("sentence_transformers").__name__ == "SentenceTransformersProvider"
