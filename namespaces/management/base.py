"""The base of management commands that act on a namespace."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from namespaces.models import Namespace, Tenant


def namespace_named(name: str) -> Namespace:
    """The namespace called `name`, or a CommandError listing the known ones."""
    namespace = Namespace.objects.filter(name=name).first()
    if namespace is None:
        known = ", ".join(Namespace.objects.order_by("name").values_list("name", flat=True)) or "none"
        raise CommandError(f"Unknown namespace {name!r}. Known: {known}. Run `manage.py sync_namespaces` first?")
    return namespace


class NamespaceCommand(MedkgCommand):
    """A command with a --namespace argument, resolved with `namespace_named`."""

    def add_namespace_argument(self, parser: CommandParser, *, required: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("help", "The namespace's name, e.g. single_vector.minilm.384.v1.")
        parser.add_argument("--namespace", required=required, **kwargs)

    def namespace_named(self, name: str) -> Namespace:
        return namespace_named(name)

    def add_tenant_argument(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant's partition (its slug); default: every tenant.")

    def tenant_option(self, options: dict[str, Any]) -> Tenant | None:
        """The tenant named by --tenant, None without it, or a CommandError for an unknown slug."""
        if not options.get("tenant"):
            return None
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"Unknown tenant {options['tenant']!r}.")
        return tenant
