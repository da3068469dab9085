"""PrincipalCache: who a token's user is, for a moment, forgotten at once when the user changes."""

from __future__ import annotations

from streamplat.auth.principals import PrincipalCache
from streamplat.auth.schemas import Principal
from streamplat.events import EventBus, UserChanged


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ALICE = Principal(id=1, username="alice", role="streamer")


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = PrincipalCache(2.0, clock=clock)
    cache.put(ALICE.id, ALICE, cache.generation)
    assert cache.get(1) == ALICE
    clock.now += 1.9
    assert cache.get(1) == ALICE
    clock.now += 0.1
    assert cache.get(1) is None


async def test_a_user_changed_event_drops_the_user_at_once() -> None:
    bus = EventBus()
    cache = PrincipalCache(60.0)
    cache.attach(bus)
    cache.put(ALICE.id, ALICE, cache.generation)
    cache.put(2, Principal(id=2, username="bob", role="viewer"), cache.generation)
    await bus.publish(UserChanged(1))
    assert cache.get(1) is None
    assert cache.get(2) is not None
    cache.detach(bus)
    cache.put(ALICE.id, ALICE, cache.generation)
    await bus.publish(UserChanged(1))
    assert cache.get(1) == ALICE  # detached: no longer listening


def test_a_read_that_raced_a_change_is_not_stored() -> None:
    cache = PrincipalCache(60.0)
    before = cache.generation  # a request starts reading alice from the database ...
    cache.invalidate(1)  # ... an admin deactivates her meanwhile ...
    cache.put(ALICE.id, ALICE, before)  # ... and the (possibly old) row it read must not be cached
    assert cache.get(1) is None
    cache.put(ALICE.id, ALICE, cache.generation)
    assert cache.get(1) == ALICE


def test_zero_ttl_caches_nothing_and_size_is_bounded() -> None:
    off = PrincipalCache(0)
    off.put(ALICE.id, ALICE, off.generation)
    assert off.get(1) is None
    small = PrincipalCache(60.0, max_entries=2)
    for i in range(1, 4):
        small.put(i, Principal(id=i, username=f"u{i}", role="viewer"), small.generation)
    assert small.get(1) is None and small.get(2) is not None and small.get(3) is not None
