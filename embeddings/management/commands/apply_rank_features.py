"""manage.py apply_rank_features [--namespace NS] [--dry-run]: the OpenSearch index templates of sparse namespaces."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from core.management import MedkgCommand
from embeddings.rank_features import rank_features_templates_apply


class Command(MedkgCommand):
    help = (
        "Create or update the OpenSearch index template (a `rank_features` field named by pyserini.yaml's "
        "opensearch.rank_features_field) of every sparse namespace stored in OpenSearch, or of --namespace. "
        "Templates are generated from config/embedding/namespaces/*.yaml and pyserini.yaml; each is compared with "
        "the cluster's, the unified diff printed, and PUT only when it differs (a second run changes nothing). "
        "Templates shape indexes created afterwards; an existing index keeps its mapping. Needs OPENSEARCH_URL. "
        "Exits 1 on failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--namespace", help="Only this sparse namespace (its name in the seed files).")
        parser.add_argument("--dry-run", action="store_true", help="Print the diff, change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        changes = rank_features_templates_apply(namespace=options["namespace"], dry_run=options["dry_run"])
        if not changes:
            self.stdout.write("No sparse namespace is stored in OpenSearch (MEDKG_SPARSE_STORE or parameters.store).")
            return
        for change in changes:
            self.stdout.write(f"{change.namespace}: _index_template/{change.template}")
            if not change.diff:
                self.stdout.write("  unchanged")
                continue
            self.stdout.write(change.diff, ending="")
            if change.applied:
                self.stdout.write(self.style.SUCCESS("  applied"))
            else:
                self.stdout.write("  dry run: not applied")
