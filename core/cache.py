"""A per-process cache whose entries expire after a TTL read from settings at each lookup.

The request path keeps rows it reads on every request (tenants, namespaces, the serving routes) for a second or so,
so most requests cost no query, while a change still reaches every process within the TTL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Values per key, fresh for `ttl()` seconds (0 or less: every lookup loads).

    `load(previous)` is called with the expired value (or None) and may return None, which is never stored (an
    unknown name cannot fill the cache). A load that raced with `clear()` is not stored: what it read may be the
    old row. With `single_flight`, one thread loads while the others wait for its result (a snapshot every
    request needs); otherwise threads load side by side. At `max_entries` the cache empties, so a flood of distinct
    keys cannot grow memory without bound.
    """

    def __init__(self, ttl: Callable[[], float], *, max_entries: int = 4096, single_flight: bool = False) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._single_flight = single_flight
        self._entries: dict[K, tuple[float, V]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _fresh(self, key: K, ttl: float) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        return time.monotonic() - entry[0] < ttl, entry[1]

    def get(self, key: K, load: Callable[[V | None], V | None]) -> V | None:
        ttl = self._ttl()
        fresh, value = self._fresh(key, ttl)
        if fresh:
            return value
        if self._single_flight:
            with self._lock:
                fresh, value = self._fresh(key, ttl)
                if fresh:
                    return value
                loaded = load(value)
                if loaded is not None:
                    self._put(key, loaded)
                return loaded
        generation = self._generation
        loaded = load(value)
        if loaded is not None and ttl > 0:
            with self._lock:
                if generation == self._generation:
                    self._put(key, loaded)
        return loaded

    def _put(self, key: K, value: V) -> None:
        if len(self._entries) >= self._max_entries and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)

    def expire(self) -> None:
        """Reload every key at its next lookup, keeping the values for `load(previous)`."""
        with self._lock:
            self._entries = {key: (float("-inf"), value) for key, (_, value) in self._entries.items()}

    def clear(self) -> None:
        """Forget every value; loads in flight are not stored."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
