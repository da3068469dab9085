"""The event bus: a failing handler is retried, then logged and counted, never silently lost."""

from __future__ import annotations

import logging

import pytest

from streamplat.events import EventBus, PublisherConnected


async def test_failing_handler_is_retried_until_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(attempts=3, first_pause_seconds=0.01)
    calls: list[str] = []
    others: list[str] = []

    async def flaky(event: PublisherConnected) -> None:
        calls.append(event.stream_id)
        if len(calls) < 3:
            raise RuntimeError("database is locked")

    bus.subscribe(PublisherConnected, flaky)
    bus.subscribe(PublisherConnected, lambda e: others.append(e.stream_id))
    with caplog.at_level(logging.WARNING, logger="streamplat.events"):
        await bus.publish(PublisherConnected("s1"))
    assert calls == ["s1", "s1", "s1"]
    assert others == ["s1"]
    assert bus.failed_deliveries == 0
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and all(r.exc_info for r in retries)


async def test_handler_that_keeps_failing_is_given_up_loudly(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(attempts=2, first_pause_seconds=0.01)
    others: list[str] = []

    def broken(event: PublisherConnected) -> None:
        raise ValueError("bug")

    bus.subscribe(PublisherConnected, broken)
    bus.subscribe(PublisherConnected, lambda e: others.append(e.stream_id))
    with caplog.at_level(logging.WARNING, logger="streamplat.events"):
        await bus.publish(PublisherConnected("s2"))  # the publisher is not broken by it
    assert others == ["s2"]
    assert bus.failed_deliveries == 1
    gave_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR and gave_up[0].exc_info
