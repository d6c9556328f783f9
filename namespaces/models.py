"""Tenants, embedding namespaces and the access audit trail."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

NAMESPACE_NAME_PATTERN = re.compile(
    r"^(?P<kind>single_vector|sparse|multi_vector|reranker)\.(?P<model>[a-z0-9][a-z0-9_\-]*)\."
    r"(?P<dim>[1-9][0-9]*|auto)\.v(?P<version>[1-9][0-9]*)$"
)
TENANT_SLUG_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"
SCOPES = ("embed:read", "embed:write", "embed:admin")


def validate_positive(value: float) -> None:
    if not value > 0:
        raise ValidationError("must be greater than 0")


class Tenant(models.Model):
    slug = models.CharField(
        max_length=63,
        unique=True,
        validators=[RegexValidator(TENANT_SLUG_PATTERN, "lowercase letters, digits, '-' and '_'")],
        help_text="The tenant id carried in JWTs (`tenant_id`) and request payloads.",
    )
    name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True, help_text="Tokens of an inactive tenant are refused.")
    quota_requests_per_second = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="API requests per second (bursts of one second's worth). Empty: the default "
        "(MEDKG_QUOTA_REQUESTS_PER_SECOND); 0: unlimited.",
    )
    quota_tokens_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Embedded tokens per minute. Empty: the default (MEDKG_QUOTA_TOKENS_PER_MINUTE); 0: unlimited.",
    )
    max_documents = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Live documents stored, all namespaces together. Empty: the default "
        "(MEDKG_MAX_DOCUMENTS_PER_TENANT); 0: unlimited.",
    )
    max_stored_bytes = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes stored (UTF-8 text + metadata JSON of live documents). Empty: the default "
        "(MEDKG_MAX_STORED_BYTES_PER_TENANT); 0: unlimited.",
    )
    scheduling_weight = models.FloatField(
        default=1.0,
        validators=[validate_positive],
        help_text="Share of the model when tenants compete: a tenant of weight 2 gets twice the tokens of weight 1",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scheduling_weight__gt=0), name="tenant_scheduling_weight_positive"
            )
        ]

    def __str__(self) -> str:
        return self.slug


class TenantUsage(models.Model):
    """What a tenant stores now: its live documents and their bytes (UTF-8 text + metadata JSON).

    Kept by ingestion in the transaction that accepts or deletes documents, so a limit check reads (and locks)
    this one row instead of summing every document: the check costs the same at ten documents and ten million.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="usage")
    documents = models.BigIntegerField(default=0)
    stored_bytes = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "tenant usage"

    def __str__(self) -> str:
        return f"{self.tenant_id}: {self.documents} documents, {self.stored_bytes} bytes"


class NamespaceKind(models.TextChoices):
    SINGLE_VECTOR = "single_vector", "single vector (dense)"
    SPARSE = "sparse", "sparse (term weights)"
    MULTI_VECTOR = "multi_vector", "multi vector (late interaction)"
    RERANKER = "reranker", "reranker (cross-encoder scores)"


class Pooling(models.TextChoices):
    MEAN = "mean"
    CLS = "cls"
    LAST_TOKEN = "last_token"
    MAX = "max"
    NONE = "none"


def matryoshka_dims_problem(sizes: object, dim: int | None) -> str | None:
    """Why `sizes` cannot be a namespace's Matryoshka sizes (None when they can): distinct integers in 1..dim-1."""
    if not isinstance(sizes, list) or not all(type(size) is int for size in sizes):
        return "must be a list of integers"
    if not sizes:
        return None
    if dim is None:
        return "needs a namespace dimension"
    if any(not 0 < size < dim for size in sizes):
        return f"each size must be between 1 and {dim - 1} (the full dimension {dim} is always allowed)"
    if len(set(sizes)) != len(sizes):
        return "sizes must be unique"
    return None


def reranker_fields_problem(*, dim: int | None, prompts: bool, matryoshka: bool) -> tuple[str, str] | None:
    """The field a reranker namespace may not set and why (None when it sets none): shared by the admin and YAML."""
    if dim is not None:
        return "dim", "a reranker has no dimension: leave dim empty and name it reranker.<model>.auto.<vN>"
    if prompts:
        return "query_prompt", "prompts are for dense namespaces, a reranker scores the texts as sent"
    if matryoshka:
        return "matryoshka_dims", "a reranker has no vectors to shorten"
    return None


class Namespace(models.Model):
    """An embedding space: one model, one dimension, one version. Vectors of two namespaces never mix."""

    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[RegexValidator(NAMESPACE_NAME_PATTERN, "must look like <kind>.<model>.<dim|auto>.<vN>")],
    )
    kind = models.CharField(max_length=20, choices=NamespaceKind.choices)
    provider = models.CharField(max_length=50, help_text="Provider registry key, e.g. sentence_transformers, vllm")
    model_id = models.CharField(max_length=300, help_text="Model identifier reported to clients.")
    model_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where the weights load from: a local folder or package:NAME/sub/folder. Empty for remote providers.",
    )
    model_version = models.CharField(max_length=100, blank=True)
    dim = models.PositiveIntegerField(null=True, blank=True, help_text="Vector dimension; empty for `auto` (sparse).")
    max_tokens = models.PositiveIntegerField(help_text="Token budget per text, special tokens included.")
    tokenizer = models.CharField(max_length=500, blank=True, help_text="Local tokenizer folder or package:NAME/...")
    pooling = models.CharField(max_length=20, choices=Pooling.choices, default=Pooling.MEAN)
    normalize = models.BooleanField(default=True)
    batch_size = models.PositiveIntegerField(default=32)
    requires_gpu = models.BooleanField(default=False)
    endpoint = models.CharField(
        max_length=500, blank=True, help_text="Remote provider base URL; ${VAR} is read from the environment."
    )
    parameters = models.JSONField(default=dict, blank=True)
    matryoshka_dims = models.JSONField(
        default=list,
        blank=True,
        help_text="Smaller sizes the model was trained to answer with (Matryoshka): a request's `dimensions` may "
        "name one of them (or dim), and gets the renormalized prefix of the full vector. Each below dim.",
    )
    query_prompt = models.TextField(
        blank=True, help_text="Prepended to each query text before embedding (dense namespaces), e.g. an instruction."
    )
    document_prompt = models.TextField(
        blank=True, help_text="Prepended to each document text before embedding (dense namespaces)."
    )
    fallback = models.CharField(
        max_length=200,
        blank=True,
        help_text="Namespace that answers automatically while this one's provider is unavailable; "
        "only used when its dimension is the same (otherwise 503 naming it).",
    )
    enabled = models.BooleanField(default=True)
    allowed_scopes = models.JSONField(default=list, blank=True, help_text="Scopes that may use this namespace.")
    allow_all_tenants = models.BooleanField(default=False)
    allowed_tenants = models.ManyToManyField(Tenant, blank=True, related_name="namespaces")
    description = models.TextField(blank=True)
    source_file = models.CharField(max_length=500, blank=True, help_text="The YAML seed file, when synced.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def allowed_dimensions(self) -> list[int]:
        """The sizes a request may ask for: the Matryoshka sizes and the full dimension, ascending."""
        return sorted({*(self.matryoshka_dims or []), *([self.dim] if self.dim else [])})

    def prompt_for(self, input_type: str) -> str:
        """The text prepended to a query or a document before embedding."""
        return self.query_prompt if input_type == "query" else self.document_prompt

    def clean(self) -> None:
        match = NAMESPACE_NAME_PATTERN.match(self.name or "")
        if not match:
            raise ValidationError({"name": "must look like <kind>.<model>.<dim|auto>.<vN>"})
        if match["kind"] != self.kind:
            raise ValidationError({"kind": f"the name says {match['kind']!r}"})
        if match["dim"] != "auto" and int(match["dim"]) != self.dim:
            raise ValidationError({"dim": f"the name says {match['dim']}"})
        if self.kind == NamespaceKind.RERANKER:
            self._clean_reranker()
        elif self.kind != NamespaceKind.SPARSE and not self.dim:
            raise ValidationError({"dim": "dense namespaces need a dimension"})
        if self.fallback and (self.fallback == self.name or not NAMESPACE_NAME_PATTERN.match(self.fallback)):
            raise ValidationError({"fallback": "must name another namespace"})
        problem = matryoshka_dims_problem(self.matryoshka_dims, self.dim)
        if problem:
            raise ValidationError({"matryoshka_dims": problem})
        if self.kind == NamespaceKind.SPARSE and (self.query_prompt or self.document_prompt):
            raise ValidationError({"query_prompt": "prompts are for dense namespaces"})
        unknown = set(self.allowed_scopes or []) - set(SCOPES)
        if unknown:
            raise ValidationError({"allowed_scopes": f"unknown scopes: {sorted(unknown)}"})

    def _clean_reranker(self) -> None:
        """A reranker scores (query, document) pairs: it has no vector size and sees both texts as they are."""
        problem = reranker_fields_problem(
            dim=self.dim, prompts=bool(self.query_prompt or self.document_prompt), matryoshka=bool(self.matryoshka_dims)
        )
        if problem:
            raise ValidationError({problem[0]: problem[1]})


class AccessRefusalReason(models.TextChoices):
    MISSING_TOKEN = "missing_token"
    INVALID_TOKEN = "invalid_token"
    EXPIRED_TOKEN = "expired_token"
    TENANT_INACTIVE = "tenant_inactive"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    TENANT_MISMATCH = "tenant_mismatch"
    NAMESPACE_NOT_GRANTED = "namespace_not_granted"
    NAMESPACE_UNKNOWN = "namespace_unknown"
    JOB_NOT_OWNED = "job_not_owned"
    JOB_UNKNOWN = "job_unknown"


class AccessAuditEvent(models.Model):
    """One refused request (the runbook's `namespace_access` event). Evidence: never edited."""

    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    token_tenant = models.CharField(max_length=200, blank=True, db_index=True)
    claimed_tenant = models.CharField(max_length=200, blank=True)
    namespace = models.CharField(max_length=200, blank=True, db_index=True)
    endpoint = models.CharField(max_length=100)
    method = models.CharField(max_length=10, blank=True)
    reason = models.CharField(max_length=40, choices=AccessRefusalReason.choices, db_index=True)
    status_code = models.PositiveSmallIntegerField()
    request_id = models.CharField(max_length=64, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.reason} {self.token_tenant or '-'} {self.endpoint}"


class UnauthenticatedRefusalWindow(models.Model):
    """Refusals before authentication (no token, a bad or expired one), one row per source, reason and window.

    A flood of bad tokens costs no more rows than sources x reasons x windows; the refusal counter still
    counts each one. Evidence: only its count and last time grow.
    """

    window_start = models.DateTimeField(db_index=True)
    client_address = models.CharField(max_length=45, blank=True)  # "" when the server did not see one
    reason = models.CharField(max_length=40, choices=AccessRefusalReason.choices)
    count = models.PositiveBigIntegerField(default=0)
    throttled = models.PositiveBigIntegerField(default=0, help_text="Of count, answered 429 by the address throttle.")
    first_endpoint = models.CharField(max_length=100, blank=True)
    first_request_id = models.CharField(max_length=64, blank=True)
    last_seen_at = models.DateTimeField()

    class Meta:
        ordering = ["-window_start", "-count"]
        constraints = [
            models.UniqueConstraint(fields=["window_start", "client_address", "reason"], name="one_refusal_window")
        ]

    def __str__(self) -> str:
        return f"{self.window_start:%Y-%m-%d %H:%M} {self.client_address or '-'} {self.reason} x{self.count}"


ALIAS_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]*(\.[a-z0-9][a-z0-9_\-]*){0,3}$")


def validate_alias_name(value: str) -> None:
    if not ALIAS_NAME_PATTERN.match(value or ""):
        raise ValidationError("lowercase letters, digits, '-', '_', up to four dot-separated parts")
    if NAMESPACE_NAME_PATTERN.match(value):
        raise ValidationError("an alias cannot look like a namespace version (<kind>.<model>.<dim>.<vN>)")


class NamespaceAlias(models.Model):
    """A stable name (`dense.default`, `single_vector.minilm`) that resolves to one concrete namespace version.

    Accepted wherever a namespace name is; answers name the concrete namespace. Grants are checked on the concrete
    namespace. Flipped with `namespaces.services.alias_flip` (atomic, audited in `AliasFlip`).
    """

    name = models.CharField(max_length=200, unique=True, validators=[validate_alias_name])
    namespace = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="aliases")
    description = models.TextField(blank=True)
    changed_by = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "namespace aliases"

    def __str__(self) -> str:
        return f"{self.name} → {self.namespace_id and self.namespace.name}"


class AliasFlip(models.Model):
    """One change of an alias's target (who, when, from, to, why). Evidence: never edited."""

    alias = models.ForeignKey(NamespaceAlias, on_delete=models.CASCADE, related_name="flips")
    from_namespace = models.CharField(max_length=200, blank=True, help_text="Empty when the alias was created.")
    to_namespace = models.CharField(max_length=200)
    changed_by = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    flipped_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-flipped_at", "-id"]

    def __str__(self) -> str:
        return (
            f"{self.flipped_at:%Y-%m-%d %H:%M:%S} {self.alias.name}: {self.from_namespace or '-'} → {self.to_namespace}"
        )


class StandbyPurpose(models.TextChoices):
    ROLLBACK = "rollback", "rollback target"
    MIGRATION = "migration", "migration (next version, or the old one during the rollback window)"


class NamespaceStandby(models.Model):
    """`standby` receives every document accepted for `primary` (re-embedded from the stored text), and its deletes.

    Mirrored writes do not mirror again: a pair written both ways (during a migration's rollback window) is no loop.
    """

    primary = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="standby_links")
    standby = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="primary_links")
    purpose = models.CharField(max_length=20, choices=StandbyPurpose.choices, default=StandbyPurpose.ROLLBACK)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["primary__name", "standby__name"]
        constraints = [
            models.UniqueConstraint(fields=["primary", "standby"], name="one_standby_link"),
            models.CheckConstraint(condition=~models.Q(primary=models.F("standby")), name="standby_not_itself"),
        ]

    def __str__(self) -> str:
        return f"{self.primary.name} ⇒ {self.standby.name} ({self.purpose})"

    def clean(self) -> None:
        if self.primary_id and self.primary_id == self.standby_id:
            raise ValidationError({"standby": "a namespace cannot be its own standby"})
        if self.primary_id and self.standby_id and self.primary.kind != self.standby.kind:
            raise ValidationError(
                {"standby": f"{self.primary.name} is {self.primary.kind}, {self.standby.name} is not"}
            )
