"""manage.py evaluate_retrieval --namespace NS [--namespace NS2 --fusion rrf] --dataset PATH: nDCG@10 and Recall@10."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from embeddings.fusion import RRF_K
from embeddings.models import EvaluationRun
from embeddings.retrieval_evaluation import FusionSpec, retrieval_evaluate
from namespaces.management.base import NamespaceCommand


def _weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, separator, value = part.rpartition("=")
        try:
            weights[name if separator else value] = float(value) if separator else 1.0
        except ValueError as error:
            raise CommandError(f"--weights: {part!r} is not NAMESPACE=NUMBER") from error
    return weights


class Command(NamespaceCommand):
    help = (
        "Evaluate retrieval on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv): ingest the "
        "corpus into a throwaway tenant through the ingestion path (Celery workers when a broker is configured), "
        "run the judged queries through the search path, print nDCG@10 and Recall@10 and store an EvaluationRun, "
        "the baseline of the Recall@10 rollback trigger. Dense and sparse namespaces alike; repeat --namespace and "
        "add --fusion rrf|minmax to also measure their hybrid (one ingestion for all). --min-ndcg makes it a gate "
        "(exit code 1 when the hybrid, or the single namespace, scores below it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_namespace_argument(parser, action="append", help="Repeat to evaluate several.")
        parser.add_argument("--dataset", required=True, type=Path, help="Folder of the BEIR dataset.")
        parser.add_argument("--fusion", choices=["rrf", "minmax"], help="Also fuse the namespaces (hybrid search).")
        parser.add_argument(
            "--weights",
            default="",
            help="Fused namespaces and weights, NS=W,NS2=W2 (default: every --namespace, weight 1).",
        )
        parser.add_argument("--rrf-k", type=int, default=RRF_K, help=f"RRF's k (default {RRF_K}).")
        parser.add_argument("--keep-tenant", action="store_true", help="Keep the evaluation tenant and its index.")
        parser.add_argument("--min-ndcg", type=float, default=None, help="Fail when nDCG@10 is below this.")
        parser.add_argument("--json", action="store_true", help="Print each run as one JSON line.")

    def handle(self, *args: Any, **options: Any) -> None:
        namespaces = [self.namespace_named(name) for name in options["namespace"]]
        fusion = None
        if options["fusion"]:
            weights = _weights(options["weights"]) or {namespace.name: 1.0 for namespace in namespaces}
            fusion = FusionSpec(method=options["fusion"], weights=weights, rrf_k=options["rrf_k"])
        elif options["weights"]:
            raise CommandError("--weights needs --fusion")
        with self.progress(unit="item") as progress:
            report = retrieval_evaluate(
                namespaces=namespaces,
                dataset_path=options["dataset"],
                fusion=fusion,
                progress=progress,
                keep_tenant=options["keep_tenant"],
            )
        for run in [*report.runs, *([report.fused] if report.fused else [])]:
            self._print(run, as_json=options["json"])
        gated = report.fused or report.runs[0]
        ndcg = gated.metrics["ndcg_at_10"]
        if options["min_ndcg"] is not None and ndcg < options["min_ndcg"]:
            raise CommandError(f"nDCG@10 {ndcg:.4f} is below the gate {options['min_ndcg']:.4f}")

    def _print(self, run: EvaluationRun, *, as_json: bool) -> None:
        name = run.spec or run.namespace.name
        if as_json:
            self.stdout.write(
                json.dumps(
                    {"run": run.pk, "namespace": run.namespace.name, "spec": run.spec, "dataset": run.dataset}
                    | run.metrics
                )
            )
            return
        self.stdout.write(
            f"{name} on {run.dataset}: nDCG@10 {run.metrics['ndcg_at_10']:.4f}  "
            f"Recall@10 {run.metrics['recall_at_10']:.4f}  Recall@100 {run.metrics['recall_at_100']:.4f}  "
            f"({run.queries} queries, {run.documents} documents, {run.duration_seconds:.0f} s; EvaluationRun {run.pk})"
        )
