"""A short-lived read cache that a change empties at once, for rows this process reads per request.

Changes made by this process reach it at once: the owner calls `invalidate(key)` right after the
commit that changed the row, before the change's response is sent. Changes made by another
process on the same database (a CLI command, an operator's SQL, later another node) cannot be
seen that way; entries therefore also expire after `ttl_seconds`, which bounds how long such a
change takes to apply. A miss is never cached: an unknown key is looked up every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["ReadCache"]


class ReadCache(Generic[K, V]):
    """key -> value for `ttl_seconds`, at most `max_entries`; `ttl_seconds` 0 turns it off."""

    def __init__(
        self, ttl_seconds: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        # Bumped by every invalidation. A lookup that started before a change must not store what
        # it read (it may be the old row): `put` compares the generation it was given.
        self._generation = 0

    @property
    def generation(self) -> int:
        """Take this before reading from the database; hand it to `put`."""
        return self._generation

    def get(self, key: K) -> V | None:
        """The cached value, or None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, generation: int) -> None:
        """Remember `value`, unless anything was invalidated since `generation`."""
        if self.ttl <= 0 or generation != self._generation:
            return
        if key not in self._entries and len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest entry
        self._entries[key] = (self._clock() + self.ttl, value)

    def invalidate(self, key: K) -> None:
        """Forget one key (its row changed)."""
        self._generation += 1
        self._entries.pop(key, None)
