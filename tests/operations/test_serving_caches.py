"""purge_embedding_cache and reload_providers: every serving process drops its cached providers."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from embeddings.providers.registry import provider_for
from namespaces.models import Namespace
from operations.models import ServingControl
from operations.serving import namespace_serving, serving_state
from tests.conftest import DEFAULT_NAMESPACE
from tests.operations.conftest import QWEN

pytestmark = pytest.mark.django_db


def run(name, *arguments):
    out = StringIO()
    call_command(name, *arguments, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_purge_moves_the_generation_and_a_serving_process_rebuilds_its_providers(synced, settings):
    settings.MEDKG_SERVING_STATE_TTL = 0.0  # the snapshot is reloaded at every request
    namespace = synced[DEFAULT_NAMESPACE]
    namespace_serving(namespace)
    before = provider_for(namespace)
    state = serving_state()

    output = run("purge_embedding_cache", "--reason", "vLLM moved")

    assert "serving generation 1" in output
    assert ServingControl.objects.get().reason == "vLLM moved"
    ServingControl.objects.update(generation=2)  # and another purge, from another process
    assert namespace_serving(namespace) == namespace
    assert serving_state().generation == 2 and state.generation == 0
    assert provider_for(namespace) is not before  # rebuilt from the namespace's settings


def test_reload_providers_reports_each_namespace(synced, monkeypatch):
    monkeypatch.delenv("VLLM_URL", raising=False)

    output = run("reload_providers")

    assert f"{DEFAULT_NAMESPACE}: ready" in output
    assert f"{QWEN}: NOT READY" in output and "VLLM_URL" in output


def test_reload_providers_fails_when_the_default_cannot_serve(synced):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(model_path="/nonexistent")

    with pytest.raises(CommandError, match="cannot serve"):
        run("reload_providers")


def test_reload_providers_restarts_the_deployments_with_kubectl(synced):
    output = run("reload_providers", "--kubectl", "--dry-run")

    assert output.splitlines() == [
        "would run: kubectl -n medkg rollout restart deployment/medkg-web deployment/medkg-worker",
        "would run: kubectl -n medkg rollout status deployment/medkg-web --timeout=600s",
        "would run: kubectl -n medkg rollout status deployment/medkg-worker --timeout=600s",
    ]
