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

from streamplat.auth.schemas import Principal
from streamplat.events import EventBus, UserChanged
from streamplat.readcache import ReadCache

__all__ = ["PrincipalCache"]


class PrincipalCache(ReadCache[int, Principal]):
    """user id -> Principal for `ttl_seconds`, at most `max_entries`; `ttl_seconds` 0 turns it off."""

    def _on_user_changed(self, event: UserChanged) -> None:
        self.invalidate(event.user_id)

    def attach(self, bus: EventBus) -> None:
        """Drop users as `UserChanged` events arrive."""
        bus.subscribe(UserChanged, self._on_user_changed)

    def detach(self, bus: EventBus) -> None:
        """Stop listening to `bus`."""
        bus.unsubscribe(UserChanged, self._on_user_changed)
