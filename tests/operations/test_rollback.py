"""Rollback in the app: traffic of the vLLM namespace moves to the legacy namespace and back, dimensions never mix.

The vLLM side is the stand-in server (tests/operations/vllm_standin.py): vLLM itself needs a GPU.
The live-server version under load is in test_live_rollback.py.
"""

from __future__ import annotations

import json
import shutil
import stat
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from embeddings.models import Document, IngestionSwitch
from embeddings.stores.registry import store_for
from namespaces.models import Namespace, Tenant
from operations.errors import RollbackRefused
from operations.models import NamespaceRoute, RollbackEvent, RollbackStatus
from operations.services import rollback_start, rollback_undo
from tests.conftest import assert_error
from tests.operations.conftest import MINILM, QWEN
from tests.servers import REPO_ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def short_drain(settings):
    settings.MEDKG_SERVING_STATE_TTL = 0.0  # one process here: nothing to wait for between the switch and the check


def served(api, token, endpoint="embed"):
    """(namespace, dim) that answered a request for the Qwen3 namespace; the vector's length must be the dim."""
    if endpoint == "embed":
        response = api.post("/v1/embed", {"namespace": QWEN, "texts": ["aspirin", "warfarin"]}, token=token)
        assert response.status_code == 200, response.content[:300]
        body = response.json()
        assert {len(item["vector"]) for item in body["embeddings"]} == {body["dim"]}
        return body["namespace"], body["dim"]
    response = api.post("/v1/embeddings", {"model": QWEN, "input": ["aspirin", "warfarin"]}, token=token)
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    dims = {len(item["embedding"]) for item in body["data"]}
    assert len(dims) == 1
    return body["model"], dims.pop()


def start(**overrides):
    arguments = {"namespace": QWEN, "target": MINILM, "reason": "test", "initiated_by": "pytest", **overrides}
    return rollback_start(**arguments)


def test_rollback_moves_both_endpoints_and_undo_restores(api, token_a_write, qwen_served):
    assert served(api, token_a_write) == (QWEN, 4096)

    event = start()

    assert event.status == RollbackStatus.ACTIVE
    assert (event.source_dim, event.target_dim) == (4096, 384)
    assert [step["name"] for step in event.steps] == [
        "legacy_ready",
        "standby_state",
        "pause_ingestion",
        "switch_traffic",
        "drain",
    ]
    assert all(step["ok"] for step in event.steps)
    assert event.steps[1]["detail"].startswith(f"{MINILM} is the standby of {QWEN}")  # the seed files link them
    assert 0 < event.rto_seconds <= event.duration_seconds
    assert served(api, token_a_write, "embed") == (MINILM, 384)
    assert served(api, token_a_write, "openai_embeddings") == (MINILM, 384)
    assert IngestionSwitch.objects.get(namespace__name=QWEN).paused is True
    health = {entry["namespace"]: entry for entry in api.get("/health").json()["providers"]}
    assert health[QWEN]["served_by"] == MINILM
    assert (
        f'embedding_rollback_active{{namespace="{QWEN}",target="{MINILM}"}} 1.0' in api.get("/metrics").content.decode()
    )

    undone = rollback_undo(namespace=QWEN, initiated_by="pytest", reason="recovered")

    assert undone.pk == event.pk and undone.status == RollbackStatus.UNDONE
    assert undone.restore_seconds > 0 and undone.undone_at is not None
    assert [step["name"] for step in undone.undo_steps] == [
        "primary_ready",
        "switch_traffic",
        "drain",
        "resume_ingestion",
    ]
    assert served(api, token_a_write, "embed") == (QWEN, 4096)
    assert served(api, token_a_write, "openai_embeddings") == (QWEN, 4096)
    assert IngestionSwitch.objects.get(namespace__name=QWEN).paused is False
    assert not NamespaceRoute.objects.exists()


def test_a_client_asking_for_the_primarys_dimension_is_refused_not_given_other_vectors(api, token_a_write, qwen_served):
    start()

    response = api.post("/v1/embeddings", {"model": QWEN, "input": "aspirin", "dimensions": 4096}, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert MINILM in body["error"]["message"]
    assert body["error"]["details"] == {"dimensions": 384, "allowed_dimensions": [384]}


def test_documents_accepted_during_a_rollback_are_indexed_after_the_undo_with_no_other_command(
    api, token_a_write, qwen_served, settings, django_capture_on_commit_callbacks
):
    """The undo resumes ingestion the way `manage.py ingestion resume` does: the jobs that waited run."""
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # a queued job runs when its transaction commits
    start()
    documents = [{"id": f"doc-{i}", "text": f"warfarin interacts with drug {i}"} for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        accepted = api.post(
            f"/v1/namespaces/{QWEN}/documents", {"tenant_id": "tenant-a", "documents": documents}, token=token_a_write
        )
    assert accepted.status_code == 202 and accepted.json()["status"] == "paused"

    with django_capture_on_commit_callbacks(execute=True):
        rollback_undo(namespace=QWEN, initiated_by="pytest", reason="recovered")

    job = api.get(accepted.json()["status_url"], token=token_a_write).json()
    assert (job["status"], job["processed"], job["total"]) == ("succeeded", 3, 3)
    assert store_for(Namespace.objects.get(name=QWEN)).labels(tenant="tenant-a") == set(
        Document.objects.filter(namespace__name=QWEN).values_list("pk", flat=True)
    )
    hits = api.post(
        f"/v1/namespaces/{QWEN}/search", {"tenant_id": "tenant-a", "query": "warfarin", "k": 5}, token=token_a_write
    )
    assert sorted(hit["id"] for hit in hits.json()["hits"]) == ["doc-0", "doc-1", "doc-2"]


def test_a_paused_ingestion_stays_paused_after_the_undo(qwen_served):
    IngestionSwitch.objects.create(namespace=Namespace.objects.get(name=QWEN), paused=True, reason="operator")

    event = start()
    assert event.ingestion_paused is False
    rollback_undo(namespace=QWEN, initiated_by="pytest")

    assert IngestionSwitch.objects.get(namespace__name=QWEN).reason == "operator"
    assert IngestionSwitch.objects.get(namespace__name=QWEN).paused is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda: Namespace.objects.filter(name=MINILM).update(enabled=False), "disabled"),
        (lambda: Namespace.objects.filter(name=MINILM).update(allow_all_tenants=False), "open to all tenants"),
        (lambda: Namespace.objects.filter(name=MINILM).update(allowed_scopes=["embed:read"]), "scopes"),
        (lambda: Namespace.objects.filter(name=MINILM).update(model_path="/nonexistent"), "cannot serve"),
    ],
)
def test_a_legacy_namespace_that_could_not_take_the_traffic_is_refused(
    api, token_a_write, qwen_served, change, message
):
    change()

    with pytest.raises(RollbackRefused, match=message):
        start()

    assert not NamespaceRoute.objects.exists()
    assert IngestionSwitch.objects.filter(namespace__name=QWEN, paused=True).count() == 0
    assert served(api, token_a_write) == (QWEN, 4096)


def test_a_legacy_not_granted_to_the_primarys_tenants_is_refused(qwen_served, tenant_a):
    Namespace.objects.filter(name__in=[QWEN, MINILM]).update(allow_all_tenants=False)
    Namespace.objects.get(name=QWEN).allowed_tenants.set([tenant_a, Tenant.objects.create(slug="tenant-c")])
    Namespace.objects.get(name=MINILM).allowed_tenants.set([tenant_a])

    with pytest.raises(RollbackRefused, match=r"not granted to tenants \['tenant-c'\]"):
        start()


def test_twice_unknown_and_chained_rollbacks_are_refused(qwen_served):
    with pytest.raises(RollbackRefused, match="does not exist"):
        start(target="single_vector.nothing.384.v1")
    with pytest.raises(RollbackRefused, match="itself"):
        start(target=QWEN)
    start()
    with pytest.raises(RollbackRefused, match="already served by"):
        start()
    with pytest.raises(RollbackRefused, match="do not chain"):
        start(namespace=MINILM, target=QWEN)
    assert RollbackEvent.objects.count() == 1


def test_undo_waits_for_the_primary(api, token_a_write, qwen_served):
    event = start()
    qwen_served.stop()

    with pytest.raises(RollbackRefused, match=r"primary namespace .* cannot serve") as raised:
        rollback_undo(namespace=QWEN, initiated_by="pytest")

    assert f"still on {MINILM}" in raised.value.message
    assert served(api, token_a_write) == (MINILM, 384)  # nobody is sent to a primary that is down
    assert RollbackEvent.objects.get(pk=event.pk).status == RollbackStatus.ACTIVE
    with pytest.raises(RollbackRefused, match="nothing to undo"):
        rollback_undo(namespace=MINILM, initiated_by="pytest")


# --- the command --------------------------------------------------------------------------------


def command(*arguments):
    out, err = StringIO(), StringIO()
    call_command("rollback_embeddings", *arguments, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def test_command_rolls_back_with_the_configured_legacy_and_undoes(api, token_a_write, qwen_served):
    out = StringIO()
    call_command(
        "rollback_embeddings", "--namespace", QWEN, "--reason", "vLLM OOM", "--json", stdout=out, stderr=StringIO()
    )

    summary = json.loads(out.getvalue())
    assert summary["target_namespace"] == MINILM and summary["status"] == "active"
    assert summary["rto_seconds"] > 0
    event = RollbackEvent.objects.get()
    assert event.reason == "vLLM OOM" and "@" in event.initiated_by
    assert served(api, token_a_write) == (MINILM, 384)

    assert "undone" in command("--undo", "--namespace", QWEN, "--reason", "fixed")
    assert served(api, token_a_write) == (QWEN, 4096)


def test_command_needs_a_reason_and_says_why_it_refuses(qwen_served):
    with pytest.raises(CommandError, match="--reason is required"):
        command("--namespace", QWEN)
    qwen_served.stop()
    Namespace.objects.filter(name=MINILM).update(enabled=False)
    with pytest.raises(CommandError, match="disabled"):
        command("--namespace", QWEN, "--reason", "x")


def test_dry_run_changes_nothing(qwen_served):
    output = command("--namespace", QWEN, "--reason", "rehearsal", "--dry-run")

    assert "dry run: rollback" in output and "nothing was changed" in output
    assert not RollbackEvent.objects.exists() and not NamespaceRoute.objects.exists()


# --- kubectl ------------------------------------------------------------------------------------

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: main, image: example/{name}}}]}}
"""


def replicas_patch(name: str, replicas: int) -> dict:
    return {
        "target": {"kind": "Deployment", "name": name},
        "patch": f"- op: replace\n  path: /spec/replicas\n  value: {replicas}",
    }


@pytest.fixture
def overlays(tmp_path: Path) -> Path:
    """A kustomize base with the two Deployments and rollback/production overlays (as deploy/k8s has them),
    and a triggers file pointing at them."""
    base = tmp_path / "k8s" / "base"
    base.mkdir(parents=True)
    for name in ("vllm-qwen3", "medkg-legacy-st"):
        (base / f"{name}.yaml").write_text(DEPLOYMENT.format(name=name))
    (base / "kustomization.yaml").write_text("resources: [vllm-qwen3.yaml, medkg-legacy-st.yaml]\nnamespace: medkg\n")
    for overlay, vllm_replicas, legacy_replicas in (("rollback", 0, 2), ("production", 1, 0)):
        folder = tmp_path / "k8s" / "overlays" / overlay
        folder.mkdir(parents=True)
        kustomization = {
            "resources": ["../../base"],
            "patches": [
                replicas_patch("vllm-qwen3", vllm_replicas),
                replicas_patch("medkg-legacy-st", legacy_replicas),
            ],
        }
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    config = yaml.safe_load((REPO_ROOT / "config" / "monitoring" / "rollback_triggers.yaml").read_text())
    config["kubernetes"]["rollback_overlay"] = str(tmp_path / "k8s" / "overlays" / "rollback")
    config["kubernetes"]["restore_overlay"] = str(tmp_path / "k8s" / "overlays" / "production")
    (tmp_path / "triggers.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing: apt-get install kubectl")


@needs_kubectl
def test_kubectl_dry_run_prints_the_commands_with_the_overlays_replicas(qwen_served, overlays):
    output = command(
        "--namespace",
        QWEN,
        "--reason",
        "drill",
        "--kubectl",
        "--dry-run",
        "--triggers",
        str(overlays / "triggers.yaml"),
    )

    rollback = overlays / "k8s" / "overlays" / "rollback"
    expected = [
        "would run: kubectl -n medkg get deployment vllm-qwen3 medkg-legacy-st -o name --request-timeout=10s",
        "would run: kubectl -n medkg scale deployment/medkg-legacy-st --replicas=2",
        "would run: kubectl -n medkg rollout status deployment/medkg-legacy-st --timeout=600s",
        "would run: kubectl -n medkg scale deployment/vllm-qwen3 --replicas=0",
        f"would run: kubectl apply -k {rollback}",
    ]
    lines = [line for line in output.splitlines() if line.startswith("would run: kubectl")]
    assert lines == expected
    assert output.index("scale deployment/medkg-legacy-st") < output.index("switch the route")
    assert output.index("switch the route") < output.index("scale deployment/vllm-qwen3")
    assert not RollbackEvent.objects.exists()


def test_kubectl_missing_fails_clearly_before_any_change(qwen_served, overlays):
    with pytest.raises(CommandError, match="not-a-kubectl is not on PATH"):
        command(
            "--namespace", QWEN, "--reason", "x", "--kubectl", "--kubectl-binary", "not-a-kubectl",
            "--triggers", str(overlays / "triggers.yaml"),
        )  # fmt: skip
    assert not RollbackEvent.objects.exists() and not NamespaceRoute.objects.exists()


@needs_kubectl
def test_unreachable_cluster_fails_clearly_before_any_change(qwen_served, overlays, monkeypatch, tmp_path):
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))

    with pytest.raises(CommandError, match=r"kubectl -n medkg get deployment .* failed"):
        command("--namespace", QWEN, "--reason", "x", "--kubectl", "--triggers", str(overlays / "triggers.yaml"))
    assert not RollbackEvent.objects.exists() and not NamespaceRoute.objects.exists()


@needs_kubectl
def test_kubectl_rollback_and_undo_run_in_order(api, token_a_write, qwen_served, overlays):
    """No cluster runs here: a recording kubectl on PATH logs the cluster calls and renders with the real kubectl."""
    log = overlays / "kubectl.log"
    recorder = overlays / "kubectl"
    recorder.write_text(
        f'#!/bin/sh\nif [ "$1" = kustomize ]; then exec {shutil.which("kubectl")} "$@"; fi\necho "$*" >> {log}\n'
    )
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    arguments = ["--kubectl", "--kubectl-binary", str(recorder), "--triggers", str(overlays / "triggers.yaml")]

    command("--namespace", QWEN, "--reason", "x", *arguments)
    assert served(api, token_a_write) == (MINILM, 384)
    command("--undo", "--namespace", QWEN, *arguments)

    rollback, production = overlays / "k8s" / "overlays" / "rollback", overlays / "k8s" / "overlays" / "production"
    assert log.read_text().splitlines() == [
        "-n medkg get deployment vllm-qwen3 medkg-legacy-st -o name --request-timeout=10s",
        "-n medkg scale deployment/medkg-legacy-st --replicas=2",
        "-n medkg rollout status deployment/medkg-legacy-st --timeout=600s",
        "-n medkg scale deployment/vllm-qwen3 --replicas=0",
        f"apply -k {rollback}",
        "-n medkg get deployment vllm-qwen3 medkg-legacy-st -o name --request-timeout=10s",
        "-n medkg scale deployment/vllm-qwen3 --replicas=1",
        "-n medkg rollout status deployment/vllm-qwen3 --timeout=600s",
        "-n medkg scale deployment/medkg-legacy-st --replicas=0",
        f"apply -k {production}",
    ]
    event = RollbackEvent.objects.get()
    assert event.kubectl is True
    assert [step["name"] for step in event.steps] == [
        "scale_up_legacy",
        "legacy_ready",
        "standby_state",
        "pause_ingestion",
        "switch_traffic",
        "drain",
        "scale_down_primary",
    ]
    assert event.undo_steps[0]["name"] == "scale_up_primary" and event.undo_steps[-1]["name"] == "scale_down_legacy"
