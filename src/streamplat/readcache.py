"""A short-lived read cache that a change empties at once, for rows this process reads per request.

Changes made by this process reach it at once: the owner calls `invalidate(key)` right after the
commit that changed the row, before the change's response is sent. Changes made by another
process on the same database (a CLI command, an operator's SQL, later another node) cannot be
seen that way; entries therefore also expire after `ttl_seconds`, which bounds how long such a
change takes to apply. A miss is never cached: an unknown key is looked up every time.

`get_or_load` also coalesces lookups: when an entry expires under load, the requests that miss
it together share one database read instead of each making its own (with 64 connections on one
stream that stampede was the API's p99).

And it refreshes ahead: an entry read in the last quarter of its life is read again in the
background while its callers keep getting it, so a key in constant use never expires under its
callers. Without that, every `ttl_seconds` all requests in flight for the key waited for one
read, and one read through aiosqlite waits for the GIL at each of its thread hops: 85 ms on a
busy loop (bench/api.py: /auth/validate p99 70-130 ms for a p50 of 10 ms). How long another
process's change takes to apply is still bounded by `ttl_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
S = TypeVar("S")

REFRESH_AHEAD = 0.25  # an entry read with less than this share of its life left is read again

__all__ = ["ReadCache", "cached_row"]


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
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    @property
    def generation(self) -> int:
        """Take this before reading from the database; hand it to `put`."""
        return self._generation

    def get(self, key: K) -> V | None:
        """The cached value, or None if absent or expired."""
        fresh = self._fresh(key)
        return fresh[0] if fresh is not None else None

    def _fresh(self, key: K) -> tuple[V, float] | None:
        """The cached value and the seconds it has left; None (and forgotten) once expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        left = expires - self._clock()
        if left <= 0:
            del self._entries[key]
            return None
        return value, left

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
        # A read under way may return the old row: requests from now on start their own.
        self._loading.pop(key, None)

    def clear(self) -> None:
        """Forget every key (a change that any of them may show: a list page cache)."""
        self._generation += 1
        self._entries.clear()
        self._loading.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, else what `load` returns (None: nothing to cache), read once for all
        callers that miss `key` at the same time. `load`'s exception reaches every one of them.
        A value near its expiry is returned at once and read again in the background."""
        fresh = self._fresh(key)
        if fresh is not None:
            value, left = fresh
            if left < self.ttl * REFRESH_AHEAD and key not in self._loading:
                self._start_load(key, load)
            return value
        pending = self._loading.get(key) or self._start_load(key, load)
        # Shielded: a caller that goes away (client disconnected) must not cancel the others' read.
        return await asyncio.shield(pending)

    async def get_or_read(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """`get_or_load` for a `load` that always returns a value (a row, a page) or raises."""
        value = await self.get_or_load(key, load)
        assert value is not None  # load() returns a value or raises
        return value

    def _start_load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> asyncio.Future[V | None]:
        pending = asyncio.ensure_future(self._load(key, load))
        # Retrieved even if every caller went away (or none waits: a refresh ahead), so a failure
        # is not reported as unretrieved; the next caller after an expiry reads again.
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._loading[key] = pending
        return pending

    async def _load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        generation = self._generation
        try:
            value = await load()
        except BaseException:
            # A refresh ahead that failed (the row is gone, the database is away) leaves nothing
            # behind that the next caller would be given instead of reading for itself.
            self._entries.pop(key, None)
            raise
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        if value is None:
            self._entries.pop(key, None)
        else:
            self.put(key, value, generation)
        return value


async def cached_row(
    cache: ReadCache[K, V],
    sessions: Callable[[], AbstractAsyncContextManager[S]],
    get: Callable[[S, K], Awaitable[V]],
    key: K,
) -> V:
    """`key`'s row from `cache`, else read by `get` in a session of its own (which returns the
    row or raises, e.g. NotFound). The row is for reading: changes load their own."""

    async def load() -> V:
        async with sessions() as session:
            return await get(session, key)

    return await cache.get_or_read(key, load)
