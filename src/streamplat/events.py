"""Typed in-process events and the bus the domains publish them on.

Producers and consumers never import each other: `ingest` publishes what its FFmpeg
children do, `streams` turns that into stream status, `vod` listens for ended streams,
and the WebSocket hub (later) forwards what clients care about.

`EventBus.publish` awaits every handler in subscription order, so a handler has run when
`publish` returns. Handlers must therefore be quick: anything slow is handed to a task the
handler's owner runs. Nothing that must survive a crash depends on a handler (the recording
row of a stopped stream is written in the stop's own transaction); handlers wake workers,
count, and notify.

A failing handler never breaks the publisher or the other handlers: it is logged with its
traceback and called again, a bounded number of times with a growing pause (a busy database
clears in moments), then given up on with an error line and counted in `failed_deliveries`.
Handlers must therefore be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event."""


# --- auth ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserChanged(Event):
    """A user's role, active flag or password changed (published after the commit)."""

    user_id: int


# --- ingest: what a stream's FFmpeg listener does -------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenerStarted(Event):
    """An FFmpeg SRT listener for the stream is running and waiting for a publisher."""

    stream_id: str
    port: int
    restart: int  # 0 for the first start, then 1, 2, ... for every restart in this session


@dataclass(frozen=True, slots=True)
class PublisherConnected(Event):
    """Media from a publisher is arriving (FFmpeg reported progress)."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class PublisherDisconnected(Event):
    """The publisher went away or FFmpeg exited while live; the listener will be restarted."""

    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class IngestProgress(Event):
    """Periodic numbers from FFmpeg's -progress output (about every 0.5 s while media flows)."""

    stream_id: str
    bitrate_kbps: float | None
    fps: float | None
    out_time_seconds: float | None


@dataclass(frozen=True, slots=True)
class IngestGaveUp(Event):
    """FFmpeg kept failing (bounded restarts exhausted) or no publisher came back in time.

    The stream must be stopped as if its owner had stopped it.
    """

    stream_id: str
    reason: str


# --- streams: lifecycle -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStatusChanged(Event):
    """A stream moved to a new status (created, waiting, active, stopped)."""

    stream_id: str
    status: str
    user_id: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StreamChanged(Event):
    """Something in a stream's row changed (published after the commit; for other processes'
    read caches, through Redis: this process's own cache forgets the row in the commit itself)."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class ViewerCountChanged(Event):
    """The number of distinct HLS viewers of a live stream changed."""

    stream_id: str
    count: int


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """A stream stopped for good; its media (HLS segments) is ready to become a recording."""

    stream_id: str
    user_id: int
    username: str
    title: str
    media_dir: Path


# --- vod ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordingReady(Event):
    """A recording finished processing and can be played."""

    stream_id: str
    user_id: int
    duration_seconds: float
    file_path: str
    thumbnail_path: str
    processing_seconds: float | None = None  # how long packaging took (None when unknown)


@dataclass(frozen=True, slots=True)
class RecordingFailed(Event):
    """A recording could not be processed; its source is kept for a retry."""

    stream_id: str
    user_id: int
    reason: str
    processing_seconds: float | None = None  # how long the failed attempt took (None when unknown)


E = TypeVar("E", bound=Event)
Handler = Callable[[Any], Awaitable[None] | None]


class EventBus:
    """Delivers each published event to the handlers subscribed to its type (or a base type)."""

    def __init__(self, attempts: int = 3, first_pause_seconds: float = 0.05) -> None:
        """`attempts` calls per handler and event at most; pauses grow 4x from the first."""
        self._handlers: dict[type[Event], list[Handler]] = defaultdict(list)
        self._attempts = max(1, attempts)
        self._first_pause = first_pause_seconds
        self.failed_deliveries = 0  # handler calls given up on after every attempt failed

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        """Call `handler` for every event of `event_type` (subclasses included)."""
        self._handlers[event_type].append(handler)

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        """Stop calling `handler` for `event_type`; unknown handlers are ignored."""
        handlers = self._handlers.get(event_type, [])
        if handler in handlers:
            handlers.remove(handler)

    async def publish(self, event: Event) -> None:
        """Await every handler of the event's type; a failing one is retried, then given up on."""
        for event_type in type(event).__mro__:
            for handler in list(self._handlers.get(event_type, ())):
                await self._deliver(handler, event)

    async def _deliver(self, handler: Handler, event: Event) -> None:
        name = getattr(handler, "__qualname__", repr(handler))
        pause = self._first_pause
        for attempt in range(1, self._attempts + 1):
            try:
                result = handler(event)
                if result is not None:
                    await result
                return
            except Exception:
                if attempt == self._attempts:
                    self.failed_deliveries += 1
                    log.exception("event handler %s failed for %r %d times; giving up", name, event, attempt)
                    return
                log.warning(
                    "event handler %s failed for %r (attempt %d of %d); retrying in %.2f s",
                    name,
                    event,
                    attempt,
                    self._attempts,
                    pause,
                    exc_info=True,
                )
            await asyncio.sleep(pause)
            pause *= 4
