"""Errors of the operations procedures. Commands turn them into a clear message and a non-zero exit."""

from __future__ import annotations

from core.errors import MedkgError


class RollbackRefused(MedkgError):
    """The rollback (or its undo) cannot start or go on; what was already changed is said in the message."""

    status_code = 409
    code = "rollback_refused"


class KubectlFailed(MedkgError):
    status_code = 502
    code = "kubectl_failed"


class MetricsUnavailable(MedkgError):
    """The source of the trigger values (Prometheus or the app's /metrics) cannot be read."""

    status_code = 503
    code = "metrics_unavailable"


class DrillFailed(MedkgError):
    status_code = 500
    code = "drill_failed"


class MigrationRefused(MedkgError):
    """A re-embedding migration cannot start or go on (the gate refused, or a check failed); the message says why
    and what serves now."""

    status_code = 409
    code = "migration_refused"
