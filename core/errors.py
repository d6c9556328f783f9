"""The project's own errors. Backends and services raise these, never a client library's.

Each carries the HTTP status and the snake_case code that the API answers with.
"""

from __future__ import annotations

from typing import Any


class MedkgError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(MedkgError):
    code = "invalid_request"


class UnsupportedInput(MedkgError):
    code = "unsupported_input"


class PayloadTooLarge(MedkgError):
    status_code = 413
    code = "payload_too_large"


class NamespaceDisabled(MedkgError):
    status_code = 409
    code = "namespace_disabled"


class UnsupportedNamespaceKind(MedkgError):
    status_code = 422
    code = "unsupported_namespace_kind"


class TokenBudgetExceeded(MedkgError):
    status_code = 422
    code = "token_budget_exceeded"


class BackendUnavailable(MedkgError):
    status_code = 503
    code = "backend_unavailable"


class GpuUnavailable(BackendUnavailable):
    """A namespace that requires a GPU has none: locally (in-process model) or its GPU server (vLLM) is down."""

    code = "gpu_unavailable"


class QuotaExceeded(MedkgError):
    """The tenant is over its requests/s or tokens/minute quota; the answer carries Retry-After."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, retry_after: int = 1) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class StorageLimitExceeded(MedkgError):
    """Accepting the documents would take the tenant past its limit of stored documents or bytes.

    413, not 429: waiting does not help; deleting documents or a higher limit does. No part of the request is stored.
    """

    status_code = 413
    code = "storage_limit_exceeded"


class DocumentLimitExceeded(StorageLimitExceeded):
    """The limit passed is the number of live documents (`storage_limit_exceeded` is the bytes limit)."""

    code = "document_limit_exceeded"


class TokenizerUnavailable(MedkgError):
    status_code = 503
    code = "tokenizer_unavailable"


class BackendError(MedkgError):
    """The backend answered, but with something unusable."""

    status_code = 502
    code = "backend_error"


class DimensionMismatch(MedkgError):
    """A vector's dimension differs from its namespace's: never stored nor returned."""

    status_code = 502
    code = "dimension_mismatch"


class ConfigError(ValueError):
    """A configuration file is invalid; names the file, the field and the reason."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


class AccessRefused(MedkgError):
    """A refused request. The reason is for the audit log; the client sees only code and message."""

    _ANSWERS: dict[str, tuple[int, str, str]] = {
        "missing_token": (401, "not_authenticated", "Authentication credentials were not provided."),
        "invalid_token": (401, "invalid_token", "The bearer token is invalid."),
        "expired_token": (401, "token_expired", "The bearer token has expired."),
        "tenant_inactive": (401, "invalid_token", "The bearer token is invalid."),
        "insufficient_scope": (403, "insufficient_scope", "The token lacks the scope this operation needs."),
        "tenant_mismatch": (403, "tenant_mismatch", "tenant_id does not match the token's tenant."),
        # Missing and not granted look the same from outside: existence is a secret.
        "namespace_not_granted": (404, "namespace_not_found", "Namespace not found."),
        "namespace_unknown": (404, "namespace_not_found", "Namespace not found."),
        "job_not_owned": (404, "job_not_found", "Job not found."),
        "job_unknown": (404, "job_not_found", "Job not found."),
    }

    def __init__(self, reason: str, *, namespace: str = "", claimed_tenant: str = "", detail: str = "") -> None:
        status, code, message = self._ANSWERS[reason]
        super().__init__(message)
        self.reason = reason
        # Audit-only facts: recorded by the exception handler, never sent to the client.
        self.namespace = namespace
        self.claimed_tenant = claimed_tenant
        self.detail = detail
        self.status_code = status
        self.code = code
