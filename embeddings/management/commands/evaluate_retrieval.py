"""manage.py evaluate_retrieval --namespace NS --dataset PATH: nDCG@10 and Recall@10 through the real paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from embeddings.evaluation import retrieval_evaluate
from embeddings.management.commands._common import ProgressBars, namespace_named
from medkg.errors import MedkgError


class Command(BaseCommand):
    help = (
        "Evaluate retrieval on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv): ingest the "
        "corpus into a throwaway tenant through the ingestion path (Celery workers when a broker is configured), "
        "run the judged queries through the search path, print nDCG@10 and Recall@10 and store an EvaluationRun, "
        "the baseline of the Recall@10 rollback trigger. --min-ndcg makes it a gate (exit code 1 below it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--namespace", required=True)
        parser.add_argument("--dataset", required=True, type=Path, help="Folder of the BEIR dataset.")
        parser.add_argument("--keep-tenant", action="store_true", help="Keep the evaluation tenant and its index.")
        parser.add_argument("--min-ndcg", type=float, default=None, help="Fail when nDCG@10 is below this.")
        parser.add_argument("--json", action="store_true", help="Print the run as one JSON line.")

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = namespace_named(options["namespace"])
        with ProgressBars(self.stderr, unit="item") as progress:
            try:
                run = retrieval_evaluate(
                    namespace=namespace,
                    dataset_path=options["dataset"],
                    progress=progress,
                    keep_tenant=options["keep_tenant"],
                )
            except MedkgError as error:
                raise CommandError(f"{error.code}: {error.message}") from error
        ndcg, recall = run.metrics["ndcg_at_10"], run.metrics["recall_at_10"]
        if options["json"]:
            self.stdout.write(
                json.dumps({"run": run.pk, "namespace": namespace.name, "dataset": run.dataset, **run.metrics})
            )
        else:
            self.stdout.write(
                f"{namespace.name} on {run.dataset}: nDCG@10 {ndcg:.4f}  Recall@10 {recall:.4f}  "
                f"Recall@100 {run.metrics['recall_at_100']:.4f}  ({run.queries} queries, {run.documents} documents, "
                f"{run.duration_seconds:.0f} s; EvaluationRun {run.pk})"
            )
        if options["min_ndcg"] is not None and ndcg < options["min_ndcg"]:
            raise CommandError(f"nDCG@10 {ndcg:.4f} is below the gate {options['min_ndcg']:.4f}")
