"""Rollback triggers: the typed loader, the app-side evaluation (checked against Prometheus's own PromQL engine
through promtool), Recall@10 against the last evaluation run, and incidents opened from the template."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from embeddings.models import EvaluationRun
from namespaces.models import Namespace
from operations.models import POST_INCIDENT_REVIEW_DELAY, IncidentStatus
from operations.services import incident_attach_rollback, incident_open, rollback_start
from operations.trigger_evaluation import histogram_quantile, local_values, recall_drops, triggers_evaluate
from operations.triggers import load_rollback_triggers
from tests.operations.conftest import MINILM, QWEN
from tests.servers import REPO_ROOT

TRIGGERS = REPO_ROOT / "config" / "monitoring" / "rollback_triggers.yaml"


def test_the_shipped_triggers_file_loads():
    config = load_rollback_triggers()

    assert {trigger.name for trigger in config.triggers} == {
        "latency_degradation",
        "gpu_failure_rate",
        "token_overflow_rate",
        "vllm_availability",
        "recall_drop",
    }
    assert config.rollback_for(QWEN).to == MINILM
    assert config.rollback_for(QWEN).primary_deployment == "vllm-qwen3"
    assert config.rollback_for(QWEN).legacy_deployment == "medkg-legacy-st"
    assert (config.rto_targets.canary_seconds, config.rto_targets.full_seconds, config.rto_targets.max_seconds) == (
        300,
        900,
        1200,
    )
    assert config.trigger("recall_drop").threshold == 0.05


def edited(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(TRIGGERS.read_text())
    change(data)
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda d: d["triggers"][0].update(kind="percentile"), "triggers.0.kind", "latency_quantile"),
        (lambda d: d["triggers"][1].pop("denominator"), "triggers.1", "numerator and denominator"),
        (lambda d: d["triggers"][0].update({"for": "five minutes"}), "triggers.0.for", "duration"),
        (lambda d: d["triggers"][3].update(threshold=90), "triggers.3", "fraction"),
        (lambda d: d["triggers"].append(d["triggers"][0]), "(file)", "more than once"),
        (lambda d: d["rollbacks"][0].update(to=d["rollbacks"][0]["namespace"]), "rollbacks.0", "itself"),
        (lambda d: d["rto_targets"].update(full_seconds=100), "rto_targets", "canary_seconds <= full_seconds"),
        (
            lambda d: d["triggers"][0].update(matchers={"endpoint": "("}),
            "triggers.0.matchers",
            "not a regular expression",
        ),
        (lambda d: d.update(surprise=1), "surprise", "Extra inputs"),
    ],
)
def test_a_bad_triggers_file_names_the_field_and_the_reason(tmp_path, change, field, reason):
    with pytest.raises(ConfigError) as raised:
        load_rollback_triggers(edited(tmp_path, change))

    assert raised.value.file.endswith("triggers.yaml")
    assert raised.value.field == field
    assert reason in raised.value.reason


def test_a_missing_or_unparsable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_rollback_triggers(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("triggers: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rollback_triggers(tmp_path / "bad.yaml")


def test_histogram_quantile_interpolates_like_prometheus():
    assert histogram_quantile(0.95, {0.05: 0, 0.1: 10, math.inf: 10}) == pytest.approx(0.0975)
    assert histogram_quantile(0.5, {1.0: 5, 2.0: 10, math.inf: 10}) == 1.0
    assert histogram_quantile(0.99, {1.0: 5, math.inf: 10}) == 1.0  # in +Inf: the highest finite bound
    assert math.isnan(histogram_quantile(0.95, {1.0: 0, math.inf: 0}))


# Two scrapes of the app, one minute apart.
FIRST = [
    ("embedding_requests_total", {"namespace": QWEN, "endpoint": "embed", "outcome": "ok"}, 100.0),
    ("embedding_requests_total", {"namespace": QWEN, "endpoint": "embed", "outcome": "gpu_unavailable"}, 5.0),
    ("embedding_requests_total", {"namespace": MINILM, "endpoint": "embed", "outcome": "ok"}, 50.0),
    ("embedding_token_budget_exceeded_total", {"namespace": MINILM, "action": "refused"}, 1.0),
    ("embedding_vectors_produced_total", {"namespace": MINILM}, 100.0),
    ("embedding_vectors_produced_total", {"namespace": QWEN}, 10.0),
    ("embedding_request_duration_seconds_bucket", {"namespace": QWEN, "endpoint": "embed", "le": "0.5"}, 10.0),
    ("embedding_request_duration_seconds_bucket", {"namespace": QWEN, "endpoint": "embed", "le": "1.0"}, 15.0),
    ("embedding_request_duration_seconds_bucket", {"namespace": QWEN, "endpoint": "embed", "le": "2.5"}, 20.0),
    ("embedding_request_duration_seconds_bucket", {"namespace": QWEN, "endpoint": "embed", "le": "+Inf"}, 20.0),
    (
        "embedding_request_duration_seconds_bucket",
        {"namespace": QWEN, "endpoint": "namespace_validate", "le": "0.5"},
        0.0,
    ),
    (
        "embedding_request_duration_seconds_bucket",
        {"namespace": QWEN, "endpoint": "namespace_validate", "le": "+Inf"},
        0.0,
    ),
    (
        "embedding_request_duration_seconds_bucket",
        {"namespace": MINILM, "endpoint": "openai_embeddings", "le": "0.5"},
        0.0,
    ),
    (
        "embedding_request_duration_seconds_bucket",
        {"namespace": MINILM, "endpoint": "openai_embeddings", "le": "+Inf"},
        0.0,
    ),
    ("embedding_namespace_ready", {"namespace": QWEN, "provider": "vllm", "requires_gpu": "true"}, 1.0),
    (
        "embedding_namespace_ready",
        {"namespace": MINILM, "provider": "sentence_transformers", "requires_gpu": "false"},
        1.0,
    ),
]
SECOND_VALUES = [190.0, 17.0, 80.0, 4.0, 250.0, 100.0, 20.0, 40.0, 70.0, 72.0, 0.0, 100.0, 50.0, 50.0, 0.0, 1.0]
SECOND = [(name, labels, value) for (name, labels, _), value in zip(FIRST, SECOND_VALUES, strict=True)]


def test_app_side_values_of_each_trigger():
    config = load_rollback_triggers()

    gpu = local_values(config.trigger("gpu_failure_rate"), FIRST, SECOND)
    assert gpu == {QWEN: pytest.approx(12 / 102)}  # MiniLM has no failing series: no value, as in PromQL
    assert config.trigger("gpu_failure_rate").fires(gpu[QWEN])
    overflow = local_values(config.trigger("token_overflow_rate"), FIRST, SECOND)
    assert overflow[MINILM] == pytest.approx(3 / 150)
    latency = local_values(config.trigger("latency_degradation"), FIRST, SECOND)
    # QWEN's embed requests: 52 in the window, 95% rank 49.4 falls in (1, 2.5]; validation requests are not counted.
    assert latency[QWEN] == pytest.approx(1 + 1.5 * (49.4 - 25) / 25)
    assert latency[MINILM] == pytest.approx(0.475)
    assert local_values(config.trigger("vllm_availability"), FIRST, SECOND) == {QWEN: 0.5}


def test_a_restarted_process_counts_from_zero():
    config = load_rollback_triggers()
    restarted = [
        (name, labels, value / 10) if name == "embedding_requests_total" else (name, labels, value)
        for name, labels, value in FIRST
    ]

    gpu = local_values(config.trigger("gpu_failure_rate"), FIRST, restarted)

    assert gpu[QWEN] == pytest.approx(0.5 / 10.5)  # the second scrape's own counts, as rate() reads a reset


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus")
def test_app_side_values_equal_prometheus_on_the_same_series(tmp_path):
    """promtool evaluates each trigger's generated PromQL on the two scrapes; it must expect our numbers."""
    config = load_rollback_triggers()
    series = {}
    for (name, labels, before), (_, _, after) in zip(FIRST, SECOND, strict=True):
        selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        series[f"{name}{{{selector}}}"] = f"{before:g} {after:g}"
    cases = []
    for trigger in config.triggers:
        if trigger.kind == "recall_drop":
            continue
        values = local_values(trigger, FIRST, SECOND)
        value = trigger.value_promql("1m")
        # The same namespaces (NaN included), and for each the same number (to 1e-9: the order of float operations differs).
        one_per_namespace = [{"labels": f'{{namespace="{namespace}"}}', "value": 1} for namespace in sorted(values)]
        cases.append({"expr": f"count by (namespace) ({value})", "eval_time": "1m", "exp_samples": one_per_namespace})
        for namespace, number in values.items():
            if math.isnan(number):
                continue
            only = f'label_replace(vector(1), "namespace", "{namespace}", "", "")'
            close = f"abs(({value}) - {number!r}) < bool 1e-9 and on (namespace) {only}"
            samples = [{"labels": f'{{namespace="{namespace}"}}', "value": 1}]
            cases.append({"expr": close, "eval_time": "1m", "exp_samples": samples})
    (tmp_path / "empty.rules.yaml").write_text("groups: []\n")
    test = {
        "rule_files": ["empty.rules.yaml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": key, "values": value} for key, value in series.items()],
                "promql_expr_test": cases,
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))

    result = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def evaluation(namespace: Namespace, recall: float) -> EvaluationRun:
    return EvaluationRun.objects.create(
        namespace=namespace, dataset="scifact", metrics={"ndcg_at_10": 0.6, "recall_at_10": recall}
    )


@pytest.mark.django_db
def test_recall_drop_compares_the_latest_run_with_the_one_before(synced, api):
    evaluation(synced[QWEN], 0.80)
    evaluation(synced[QWEN], 0.74)
    evaluation(synced[MINILM], 0.70)
    evaluation(synced[MINILM], 0.78)
    evaluation(Namespace.objects.get(name=MINILM), 0.779)  # latest: 0.779 against 0.78

    drops = recall_drops()

    assert drops[QWEN] == pytest.approx(0.075)
    assert drops[MINILM] == pytest.approx(0.001 / 0.78)
    trigger = load_rollback_triggers().trigger("recall_drop")
    assert trigger.fires(drops[QWEN]) and not trigger.fires(drops[MINILM])
    api.get("/health")  # exports the same two numbers for Prometheus
    metrics = api.get("/metrics").content.decode()
    assert f'embedding_retrieval_recall_at_10{{dataset="scifact",namespace="{QWEN}",run="baseline"}} 0.8' in metrics
    assert f'embedding_retrieval_recall_at_10{{dataset="scifact",namespace="{QWEN}",run="latest"}} 0.74' in metrics


class StaticSource:
    name = "static"

    def __init__(self, values):
        self.values_by_trigger = values

    def values(self, trigger, window):
        return self.values_by_trigger.get(trigger.name, {})


@pytest.mark.django_db
def test_evaluation_reports_every_trigger_even_without_data(synced):
    results = triggers_evaluate(
        config=load_rollback_triggers(), source=StaticSource({"gpu_failure_rate": {QWEN: 0.2, MINILM: 0.0}})
    )

    by_key = {(result.trigger, result.namespace): result for result in results}
    assert by_key[("gpu_failure_rate", QWEN)].fired is True
    assert by_key[("gpu_failure_rate", MINILM)].fired is False
    assert by_key[("latency_degradation", "")].detail == "no data"
    assert by_key[("recall_drop", "")].source == "evaluation_runs"


@pytest.mark.django_db
def test_incident_body_comes_from_the_template_and_review_is_due_two_hours_after_the_rollback(qwen_served, settings):
    settings.MEDKG_SERVING_STATE_TTL = 0.0
    incident = incident_open(
        trigger="gpu_failure_rate",
        severity="critical",
        namespace=QWEN,
        title="GPU failures",
        measurements={"gpu_failure_rate": "0.2 > 0.05"},
    )
    assert incident.status == IncidentStatus.OPEN
    assert f"# Incident {incident.pk}: GPU failures" in incident.body and "(pending)" in incident.body

    event = rollback_start(namespace=QWEN, target=MINILM, reason="incident", initiated_by="pytest")
    incident_attach_rollback(incident=incident, event=event)

    incident.refresh_from_db()
    assert incident.status == IncidentStatus.MITIGATED and incident.rollback_event == event
    assert incident.review_due_at == event.completed_at + POST_INCIDENT_REVIEW_DELAY
    assert f"#{event.pk}" in incident.body and "| switch_traffic |" in incident.body
    assert "gpu_failure_rate = 0.2 > 0.05" in incident.body
    assert "${" not in incident.body
