"""The runbook, the architecture page and the API page name only what exists, and say what they must."""

from __future__ import annotations

import re

import pytest

from operations.predeploy import CHECKS
from tests.deploy import doc_references
from tests.deploy.manifests import REPO_ROOT

DOCS = REPO_ROOT / "docs"
RUNBOOK = (DOCS / "runbook.md").read_text()


@pytest.mark.parametrize("document", ["runbook.md", "architecture.md", "api.md"])
def test_a_document_names_only_what_exists(document: str) -> None:
    assert doc_references.problems((DOCS / document).read_text()) == []


def test_every_kind_of_wrong_name_is_caught() -> None:
    """The checker itself: one wrong name of each kind, each reported."""
    wrong = """
```bash
kubectl -n medkg exec deployment/medkg-gone -- python manage.py no_such_command --now
python manage.py issue_token --tenant acme --no-such-option
make deploy-everything
cat deploy/k8s/overlays/nowhere/kustomization.yaml docs/missing.md
curl -s http://127.0.0.1:8000/v1/nothing-here
kubectl -n medkg get pods -l app.kubernetes.io/name=medkg-phantom
```
Watch `embedding_imaginary_seconds` and the alert `EmbeddingNeverDefined`; set `MEDKG_NO_SUCH_SETTING`.
"""

    found = "\n".join(doc_references.problems(wrong))

    for expected in (
        "management command 'no_such_command' does not exist",
        "manage.py issue_token --tenant acme --no-such-option: arguments refused",
        "make target 'deploy-everything' does not exist",
        "path deploy/k8s/overlays/nowhere/kustomization.yaml does not exist",
        "path docs/missing.md does not exist",
        "URL /v1/nothing-here is not served",
        "Kubernetes deployment/medkg-gone is in no overlay",
        "no Kubernetes object is labelled medkg-phantom",
        "metric embedding_imaginary_seconds is not exported by the app",
        "EmbeddingNeverDefined",
        "variable MEDKG_NO_SUCH_SETTING is read or set nowhere",
    ):
        assert expected in found


def test_right_names_pass_the_checker() -> None:
    right = """
```bash
kubectl -n medkg rollout restart deployment/medkg-web
kubectl -n medkg exec deployment/medkg-web -c medkg -- python manage.py issue_token --tenant acme --ttl 7d
make run
kubectl apply -k deploy/k8s/overlays/rollback
curl -s http://127.0.0.1:8000/v1/namespaces/{namespace}/validate
```
`embedding_requests_total`, `embedding_request_duration_seconds_bucket`, `MEDKG_DEFAULT_NAMESPACE`,
`deploy/secrets/secret_key` (written at run time), `config/embedding/namespaces/<name>.yaml`.
"""

    assert doc_references.problems(right) == []


def headings(markdown: str) -> list[str]:
    return [line.lstrip("#").strip().lower() for line in markdown.splitlines() if line.startswith("#")]


def test_the_runbook_has_every_section_of_the_issue() -> None:
    titles = " | ".join(headings(RUNBOOK))

    for section in (
        "lifecycle",
        "configuration sources",
        "gpu troubleshooting",
        "faiss: bootstrap, upsert, rebuild",
        "opensearch and rank features",
        "monitoring and alerts",
        "namespace access controls",
        "emergency procedures",
        "rto targets",
        "rollback triggers",
        "rollback",
        "restart",
        "purge the embedding cache",
        "drills",
        "pre-deployment checklist",
        "staging and production rollout",
    ):
        assert section in titles, section


def test_the_gpu_troubleshooting_table_covers_the_usual_failures() -> None:
    section = RUNBOOK.split("## 3. GPU troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| symptom")]

    assert len(rows) >= 8
    for symptom in ("backend_unavailable", "Insufficient nvidia.com/gpu", "CUDA out of memory", "gpu_unavailable"):
        assert symptom in section


def test_the_runbook_checklist_is_the_commands_checklist() -> None:
    section = RUNBOOK.split("## 9. Pre-deployment checklist", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE)

    assert lines == list(CHECKS)


def test_the_architecture_page_has_one_diagram_of_the_request_path() -> None:
    architecture = (DOCS / "architecture.md").read_text()
    diagrams = re.findall(r"^```mermaid\n(.*?)^```", architecture, flags=re.MULTILINE | re.DOTALL)

    assert len(diagrams) == 1
    (diagram,) = diagrams
    assert diagram.startswith("flowchart")
    for hop in ("Ingress medkg-web", "gunicorn", "TenantJWTAuthentication", "namespace_get_for_tenant", "vllm-qwen3"):
        assert hop in diagram
