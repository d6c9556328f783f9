"""Shared bits of the embeddings management commands."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError
from tqdm import tqdm

from namespaces.models import Namespace


def namespace_named(name: str) -> Namespace:
    namespace = Namespace.objects.filter(name=name).first()
    if namespace is None:
        known = ", ".join(Namespace.objects.order_by("name").values_list("name", flat=True)) or "none"
        raise CommandError(f"Unknown namespace {name!r}. Known: {known}. Run `manage.py sync_namespaces` first?")
    return namespace


class ProgressBars:
    """One tqdm bar per key (a tenant, a phase), fed by the services' (key, done, total) progress callback."""

    def __init__(self, stream: Any, unit: str = "vec") -> None:
        self.stream = stream
        self.unit = unit
        self.bars: dict[str, tqdm] = {}

    def __call__(self, key: str, done: int, total: int) -> None:
        bar = self.bars.get(key)
        if bar is None:
            bar = self.bars[key] = tqdm(total=total, desc=key, unit=self.unit, file=self.stream)
        bar.n = done
        bar.refresh()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()
