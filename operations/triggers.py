"""Typed loader of config/monitoring/rollback_triggers.yaml, and each trigger's PromQL.

A trigger is described by its kind and metric, not by a PromQL string, so that the same definition is
evaluated by Prometheus (the generated PromQL) and locally from the app's own /metrics (operations.trigger_evaluation).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from namespaces.config import config_load
from namespaces.models import NAMESPACE_NAME_PATTERN

_DURATION = re.compile(r"^(\d+)([smh])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def duration_seconds(text: str) -> int:
    """'5m' → 300. Prometheus durations of one unit, as the rules file writes them."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h")
    return int(match[1]) * _SECONDS[match[2]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Strict):
    metric: str
    matchers: dict[str, str] = Field(default_factory=dict, description="label → regular expression")

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not _METRIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a Prometheus metric name")
        return value

    @field_validator("matchers")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _LABEL_NAME.match(name)]
        if bad:
            raise ValueError(f"invalid label names {bad}")
        for pattern in value.values():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression: {error}") from error
        return value

    def promql(self, *, suffix: str = "", extra: dict[str, str] | None = None) -> str:
        matchers = {**self.matchers, **(extra or {})}
        inside = ",".join(f'{name}=~"{matchers[name]}"' for name in sorted(matchers))
        return f"{self.metric}{suffix}{{{inside}}}" if inside else f"{self.metric}{suffix}"

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a sample's labels satisfy the matchers (anchored, as in PromQL)."""
        return all(re.fullmatch(pattern, labels.get(name, "")) for name, pattern in self.matchers.items())


class Trigger(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["latency_quantile", "ratio", "availability", "recall_drop"]
    description: str = Field(min_length=1)
    threshold: float = Field(ge=0)
    for_: str = Field(default="0m", alias="for")
    severity: Literal["critical", "warning", "info"] = "critical"
    # latency_quantile, availability, recall_drop
    metric: str = ""
    matchers: dict[str, str] = Field(default_factory=dict)
    quantile: float | None = Field(default=None, gt=0, lt=1)
    # ratio
    numerator: Selector | None = None
    denominator: Selector | None = None

    @field_validator("for_")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Trigger:
        if self.kind == "ratio":
            if self.numerator is None or self.denominator is None:
                raise ValueError("a ratio trigger needs numerator and denominator")
        else:
            if not self.metric:
                raise ValueError(f"a {self.kind} trigger needs metric")
            Selector(metric=self.metric, matchers=self.matchers)  # validates the name and the patterns
        if self.kind == "latency_quantile" and self.quantile is None:
            raise ValueError("a latency_quantile trigger needs quantile")
        if self.kind in ("availability", "recall_drop") and self.threshold > 1:
            raise ValueError(f"a {self.kind} threshold is a fraction between 0 and 1")
        return self

    @property
    def selector(self) -> Selector:
        return Selector(metric=self.metric, matchers=self.matchers)

    @property
    def comparison(self) -> str:
        """How the value compares with the threshold when the trigger fires."""
        return {"availability": "<", "recall_drop": ">="}.get(self.kind, ">")

    @property
    def alert_name(self) -> str:
        return "EmbeddingRollback" + "".join(part.capitalize() for part in self.name.split("_"))

    def fires(self, value: float) -> bool:
        if value != value:  # NaN: no data (0/0) never fires
            return False
        if self.comparison == "<":
            return value < self.threshold
        if self.comparison == ">=":
            return value >= self.threshold
        return value > self.threshold

    def value_promql(self, window: str) -> str:
        """PromQL of the trigger's value, one series per namespace."""
        if self.kind == "latency_quantile":
            buckets = self.selector.promql(suffix="_bucket")
            return f"histogram_quantile({self.quantile:g}, sum by (namespace, le) (rate({buckets}[{window}])))"
        if self.kind == "ratio":
            assert self.numerator is not None
            assert self.denominator is not None
            return (
                f"sum by (namespace) (rate({self.numerator.promql()}[{window}]))"
                f" / sum by (namespace) (rate({self.denominator.promql()}[{window}]))"
            )
        if self.kind == "availability":
            return f"min by (namespace) (avg_over_time({self.selector.promql()}[{window}]))"
        baseline = f"max by (namespace, dataset) ({self.selector.promql(extra={'run': 'baseline'})})"
        latest = f"max by (namespace, dataset) ({self.selector.promql(extra={'run': 'latest'})})"
        return f"({baseline} - {latest}) / {baseline}"

    def alert_promql(self, window: str) -> str:
        return f"{self.value_promql(window)} {self.comparison} {self.threshold:g}"


class RollbackPair(_Strict):
    namespace: str
    to: str
    primary_deployment: str = Field(min_length=1)
    legacy_deployment: str = Field(min_length=1)

    @field_validator("namespace", "to")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        if not NAMESPACE_NAME_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a namespace name")
        return value

    @model_validator(mode="after")
    def _different(self) -> RollbackPair:
        if self.namespace == self.to:
            raise ValueError("a namespace cannot roll back to itself")
        return self


class KubernetesSettings(_Strict):
    namespace: str = "medkg"
    rollback_overlay: str = "deploy/k8s/overlays/rollback"
    restore_overlay: str = "deploy/k8s/overlays/production"
    app_deployments: list[str] = Field(default_factory=lambda: ["medkg-web", "medkg-worker"])
    rollout_timeout_seconds: int = Field(default=600, gt=0)


class RtoTargets(_Strict):
    canary_seconds: int = Field(default=300, gt=0)
    full_seconds: int = Field(default=900, gt=0)
    max_seconds: int = Field(default=1200, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RtoTargets:
        if not self.canary_seconds <= self.full_seconds <= self.max_seconds:
            raise ValueError("targets must satisfy canary_seconds <= full_seconds <= max_seconds")
        return self


class RollbackTriggers(_Strict):
    version: Literal[1]
    window: str = "5m"
    rollbacks: list[RollbackPair] = Field(default_factory=list)
    kubernetes: KubernetesSettings = KubernetesSettings()
    rto_targets: RtoTargets = RtoTargets()
    triggers: list[Trigger] = Field(min_length=1)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> RollbackTriggers:
        for label, names in (
            ("triggers", [trigger.name for trigger in self.triggers]),
            ("rollbacks", [pair.namespace for pair in self.rollbacks]),
        ):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{label}: {duplicates} appear more than once")
        return self

    def rollback_for(self, namespace: str) -> RollbackPair | None:
        return next((pair for pair in self.rollbacks if pair.namespace == namespace), None)

    def trigger(self, name: str) -> Trigger:
        return next(trigger for trigger in self.triggers if trigger.name == name)


def default_triggers_path() -> Path:
    return Path(settings.MEDKG_CONFIG_DIR) / "monitoring" / "rollback_triggers.yaml"


def load_rollback_triggers(path: Path | str | None = None) -> RollbackTriggers:
    """Parse and validate the triggers file; a ConfigError names the file, the field and the reason."""
    path = Path(path) if path is not None else default_triggers_path()
    return config_load(path, RollbackTriggers, shape="mapping with version, rollbacks and triggers")
