"""The base of every medkg management command (Zulip's ZulipBaseCommand): who runs it, progress bars, and a
project error turned into its message and exit code 1 instead of a traceback."""

from __future__ import annotations

import getpass
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.errors import ConfigError, MedkgError


def operator() -> str:
    """Who ran the command, for the records."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:200]


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


class MedkgCommand(BaseCommand):
    """A MedkgError ends the command as `code: message`, a ConfigError as `file: field 'f': reason`; exit code 1."""

    config_error_note = ""  # appended to a ConfigError's message (e.g. what was left unchanged)

    def execute(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute(*args, **options)
        except MedkgError as error:
            raise CommandError(f"{error.code}: {error.message}") from error
        except ConfigError as error:
            message = f"{error.file}: field {error.field!r}: {error.reason}{self.config_error_note}"
            raise CommandError(message) from error

    def progress(self, unit: str = "vec") -> ProgressBars:
        """Progress bars on stderr, so stdout stays the command's result."""
        return ProgressBars(self.stderr, unit=unit)

    @staticmethod
    def operator() -> str:
        return operator()
