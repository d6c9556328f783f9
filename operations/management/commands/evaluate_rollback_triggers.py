"""manage.py evaluate_rollback_triggers: which rollback triggers fire now; --act rolls back."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from operations.management.base import OperationsCommand
from operations.trigger_evaluation import (
    AppMetricsSource,
    PrometheusSource,
    TriggerSource,
    triggers_act,
    triggers_evaluate,
)

EXIT_FIRED = 3
EXIT_ACT_FAILED = 4


def _wait_with_progress(seconds: float) -> None:
    steps = max(1, round(seconds * 10))
    bar_format = "{desc}: {bar} {elapsed} of " + f"{seconds:.0f} s"
    for _ in tqdm(range(steps), desc="sampling the app's metrics", bar_format=bar_format, leave=False):
        time.sleep(seconds / steps)


class Command(OperationsCommand):
    help = (
        "Evaluate the rollback triggers of config/monitoring/rollback_triggers.yaml: from Prometheus when "
        "PROMETHEUS_URL (or --prometheus-url) is set, else from the running app's /metrics, scraped twice "
        "--interval seconds apart (rates over that interval); Recall@10 from the evaluation records. Prints each "
        "trigger's value per namespace against its threshold. With --act, for every namespace with a fired trigger "
        "and a legacy namespace configured: opens an Incident and runs the rollback (--kubectl to scale too). "
        "Exit 0 when nothing fired, 3 when a trigger fired (acted on with --act), 4 when --act could not roll "
        "back, 1 when the values could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--act", action="store_true", help="Open an incident and roll back what fired.")
        parser.add_argument("--prometheus-url", default=None, help="Prometheus base URL (default: $PROMETHEUS_URL).")
        parser.add_argument("--base-url", default=None, help="The app to scrape (default: $MEDKG_BASE_URL).")
        parser.add_argument("--interval", type=float, default=15.0, help="Seconds between the app's two scrapes.")
        parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
        self.add_kubectl_arguments(parser)
        self.add_triggers_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = self.triggers_from(options)
        source = self._source(options)
        results = triggers_evaluate(config=config, source=source)
        if options["json"]:
            self.stdout.write(json.dumps([result.as_dict() for result in results], indent=2))
        else:
            for result in results:
                no_value = result.value is None or math.isnan(result.value)
                value = "no data" if no_value else f"{result.value:.4g}"
                line = (
                    f"{result.trigger:<22} {result.namespace or '-':<32} {value:>10} "
                    f"{result.comparison} {result.threshold:g}  [{result.source}]"
                )
                self.stdout.write(self.style.ERROR(line + "  FIRED") if result.fired else line)
        fired = [result for result in results if result.fired]
        if not fired:
            self.stderr.write("no rollback trigger fired")
            return
        if not options["act"]:
            raise CommandError(f"{len(fired)} trigger(s) fired; run with --act to roll back", returncode=EXIT_FIRED)
        actions = triggers_act(
            results=results,
            config=config,
            initiated_by=f"evaluate_rollback_triggers --act ({self.operator()})",
            kubectl_for=lambda pair: self.rollback_kubectl(config, pair, options, self.stderr.write),
            echo=self.stderr.write,
            service_url=source.base_url if isinstance(source, AppMetricsSource) else None,
        )
        failed = [action for action in actions if action.error and action.error != "already rolled back"]
        for action in actions:
            outcome = f"rollback #{action.rollback_event_id}" if action.rollback_event_id else action.error
            self.stderr.write(f"{action.namespace}: incident #{action.incident_id or '-'}, {outcome}")
        if failed:
            raise CommandError("could not roll back: " + "; ".join(a.error for a in failed), returncode=EXIT_ACT_FAILED)
        raise CommandError(f"{len(fired)} trigger(s) fired; rolled back", returncode=EXIT_FIRED)

    def _source(self, options: dict[str, Any]) -> TriggerSource:
        prometheus = options["prometheus_url"] if options["prometheus_url"] is not None else settings.PROMETHEUS_URL
        if prometheus:
            return PrometheusSource(prometheus)
        base_url = options["base_url"] or settings.MEDKG_BASE_URL
        return AppMetricsSource(base_url, interval=options["interval"], sleep=_wait_with_progress)
