"""A short-lived cache of who a token's user is, so an authenticated read needs no user query.

Changes made by this process reach it at once: `AuthService` publishes `UserChanged` after every
commit that touches a user, and the cache drops that user before the change's response is sent,
so a deactivated or demoted user is refused on their next request. Changes made by another
process on the same database (`streamplat create-admin`, or an operator's SQL) cannot be seen
that way; entries therefore also expire after `ttl_seconds` (auth.principal_cache_seconds,
default 2 s), which bounds how long such a change takes to apply. Only active users are cached:
a refused token is checked against the database every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamplat.auth.schemas import Principal
from streamplat.events import EventBus, UserChanged

__all__ = ["PrincipalCache"]


class PrincipalCache:
    """user id -> Principal for `ttl_seconds`, at most `max_entries`; `ttl_seconds` 0 turns it off."""

    def __init__(
        self, ttl_seconds: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[int, tuple[float, Principal]] = {}
        # Bumped by every invalidation. A lookup that started before a change must not store what
        # it read (it may be the old row): `put` compares the generation it was given.
        self._generation = 0

    @property
    def generation(self) -> int:
        """Take this before reading a user from the database; hand it to `put`."""
        return self._generation

    def get(self, user_id: int) -> Principal | None:
        """The cached principal, or None if absent or expired."""
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        expires, principal = entry
        if self._clock() >= expires:
            del self._entries[user_id]
            return None
        return principal

    def put(self, principal: Principal, generation: int) -> None:
        """Remember an active user's principal, unless any user changed since `generation`."""
        if self.ttl <= 0 or generation != self._generation:
            return
        if principal.id not in self._entries and len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest entry
        self._entries[principal.id] = (self._clock() + self.ttl, principal)

    def invalidate(self, user_id: int) -> None:
        """Forget one user (their role, active flag or name changed)."""
        self._generation += 1
        self._entries.pop(user_id, None)

    def _on_user_changed(self, event: UserChanged) -> None:
        self.invalidate(event.user_id)

    def attach(self, bus: EventBus) -> None:
        """Drop users as `UserChanged` events arrive."""
        bus.subscribe(UserChanged, self._on_user_changed)

    def detach(self, bus: EventBus) -> None:
        """Stop listening to `bus`."""
        bus.unsubscribe(UserChanged, self._on_user_changed)
