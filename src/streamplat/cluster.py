"""What several streamplat processes share through Redis ([redis] url); off by default.

Without `redis.url` nothing here runs and every process keeps its in-process event bus, rate
limits and viewer counts. With it:

- `EventRelay` copies the events other processes must see (stream status, recordings, user and
  stream row changes) from the local `EventBus` to a Redis pub/sub channel, and publishes what
  other processes sent on a second bus, `remote`. Only the WebSocket hub and the read caches
  listen on `remote`: durable work (staging a recording, stopping a stream) is done once, by
  the process that raised the event, through its local handlers.
- `SharedRateLimiter` keeps the login/register sliding window in a Redis sorted set (one Lua
  script: atomic, one round trip), so N processes allow what one would.
- `SharedViewerTracker` counts HLS viewers in Redis. An HLS fetch only touches a local set; a
  background loop flushes the touches of the last second and reads every stream's count back
  in one script call per `viewer_flush_seconds`, so a fetch never waits on Redis.

Redis down (at start or later): every feature keeps working for this process alone (local
delivery, local rate limits, local viewer counts); cross-process events raised meanwhile are
dropped, not replayed (the read caches' TTLs bound what a missed invalidation costs). A
background loop reconnects with a growing pause and the state change is logged once each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamplat.auth.ratelimit import RateLimiter
from streamplat.events import (
    Event,
    EventBus,
    RecordingFailed,
    RecordingReady,
    StreamChanged,
    StreamStatusChanged,
    UserChanged,
)
from streamplat.streams.viewers import ViewerTracker

log = logging.getLogger(__name__)

# The events other processes need: what /ws clients are told, and what read caches must forget.
# ViewerCountChanged is not among them: every process reads the shared counts and announces
# changes to its own clients. StreamEnded and the ingest events drive local work only.
RELAYED: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (StreamStatusChanged, RecordingReady, RecordingFailed, UserChanged, StreamChanged)
}

RECONNECT_FIRST_PAUSE = 0.5
RECONNECT_MAX_PAUSE = 10.0
RELAY_QUEUE_SIZE = 10_000  # events waiting to be sent; beyond that (Redis stalled) they are dropped


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class RedisLink:
    """One Redis client for the process, and whether Redis is reachable right now.

    `up` is what the features check before each use: while it is False they use their local
    fallback without trying Redis (no connect timeout per request). A failed command calls
    `failed`; the relay's listener loop, which holds a connection anyway, finds out when Redis
    answers again and calls `recovered`. Each change is logged once.
    """

    def __init__(
        self,
        url: str,
        key_prefix: str,
        *,
        connect_timeout_seconds: float = 1.0,
        command_timeout_seconds: float = 1.0,
    ) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.safe_url = mask_url(url)
        self.prefix = key_prefix
        self.node_id = uuid.uuid4().hex[:16]  # tells this process's own relayed events apart
        self.connect_timeout = connect_timeout_seconds
        # One immediate retry inside redis-py: the first command after Redis restarted finds its
        # pooled connection dead and must get a fresh one. No more: a down Redis must cost one
        # failed attempt, then the fallback; noticing that it is back is the listener loop's job.
        self.client: Any = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_seconds,
            socket_timeout=command_timeout_seconds,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self.up = False
        self._announced = False  # the first state is logged whatever it is

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def recovered(self) -> None:
        if not self.up or not self._announced:
            self.up = True
            self._announced = True
            log.info("redis reachable at %s: events, rate limits and viewer counts are shared", self.safe_url)

    def failed(self, exc: BaseException) -> None:
        if self.up or not self._announced:
            self.up = False
            self._announced = True
            log.warning(
                "redis unreachable at %s (%s: %s): working single-node (local events, rate limits and "
                "viewer counts) until it answers again",
                self.safe_url,
                type(exc).__name__,
                exc,
            )

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except Exception as exc:
            self.failed(exc)
            return False
        self.recovered()
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


# --- events --------------------------------------------------------------------------------


class _Envelope(msgspec.Struct):
    node: str
    type: str
    event: msgspec.Raw


_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode


class EventRelay:
    """Local bus -> Redis channel -> other processes' `remote` bus. Enter it to run it."""

    def __init__(self, link: RedisLink, local: EventBus, remote: EventBus) -> None:
        self._link = link
        self._local = local
        self._remote = remote
        self.channel = link.key("events")
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(RELAY_QUEUE_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self._dropping = False  # a drop was logged; the next successful send logs the count

    async def __aenter__(self) -> EventRelay:
        for cls in RELAYED.values():
            self._local.subscribe(cls, self._on_local)
        self._first_try = asyncio.Event()  # set once the listener subscribed or failed to
        self._tasks = [
            asyncio.create_task(self._listen(), name="redis-listen"),
            asyncio.create_task(self._send(), name="redis-send"),
        ]
        # Started connected when Redis is there, so the first events are not missed; a Redis that
        # refuses or does not answer within the connect timeout leaves the process single-node.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_try.wait(), self._link.connect_timeout * 2 + 1)
        if not self._link.up:
            self._link.failed(ConnectionError("no answer at start"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for cls in RELAYED.values():
            self._local.unsubscribe(cls, self._on_local)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_local(self, event: Event) -> None:
        # On the publisher's path: encode and queue, never wait on Redis.
        if not self._link.up:
            self._drop()
            return
        payload = _encode({"node": self._link.node_id, "type": type(event).__name__, "event": event})
        try:
            self._outbox.put_nowait(payload)
        except asyncio.QueueFull:
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        if not self._dropping:
            self._dropping = True
            log.warning("redis: events for other processes are being dropped until it answers again")

    async def _send(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 500:
                batch.append(self._outbox.get_nowait())
            if not self._link.up:
                self.dropped += len(batch)
                continue
            try:
                async with self._link.client.pipeline(transaction=False) as pipe:
                    for payload in batch:
                        pipe.publish(self.channel, payload)
                    await pipe.execute()
            except Exception as exc:
                self.dropped += len(batch)
                self._link.failed(exc)
                continue
            self.sent += len(batch)
            if self._dropping:
                self._dropping = False
                log.info("redis: relaying events again (%d dropped so far)", self.dropped)

    async def _listen(self) -> None:
        pause = RECONNECT_FIRST_PAUSE
        while True:
            pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._link.recovered()
                self._first_try.set()
                pause = RECONNECT_FIRST_PAUSE
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        if message["type"] == "message":  # not the answers to our pings
                            await self._receive(message["data"])
                    elif not self._link.up:
                        # A command failed while this connection stayed fine: check again.
                        await self._link.ping()
                    else:
                        # Nothing for a second: make sure the subscription is still alive, so a
                        # Redis that went away unnoticed (no RST) is found within seconds.
                        await pubsub.ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._link.failed(exc)
                self._first_try.set()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX_PAUSE)

    async def _receive(self, data: bytes) -> None:
        try:
            envelope = _decode_envelope(data)
            if envelope.node == self._link.node_id:
                return  # our own event: local handlers have had it
            cls = RELAYED.get(envelope.type)
            if cls is None:
                log.debug("redis: ignoring unknown event type %r", envelope.type)
                return
            event = msgspec.json.decode(envelope.event, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("redis: ignoring a malformed message on %s: %s", self.channel, exc)
            return
        self.received += 1
        await self._remote.publish(event)


async def announce(
    url: str, key_prefix: str, events: list[Event], *, timeout_seconds: float = 2.0
) -> str | None:
    """Send `events` once to the processes sharing this Redis (for commands run beside them, like
    `streamplat create-admin`); None when sent, else why not. Nothing is retried."""
    link = RedisLink(
        url, key_prefix, connect_timeout_seconds=timeout_seconds, command_timeout_seconds=timeout_seconds
    )
    try:
        for event in events:
            payload = _encode({"node": link.node_id, "type": type(event).__name__, "event": event})
            await link.client.publish(link.key("events"), payload)
    except Exception as exc:
        return f"redis unreachable at {link.safe_url} ({type(exc).__name__}: {exc})"
    finally:
        await link.close()
    return None


# --- rate limits ---------------------------------------------------------------------------

# Sliding window log: the allowed requests' times in a sorted set; a refused request is not
# recorded (as in RateLimiter). Redis's own clock, so the processes' clocks need not agree.
_RATE_LIMIT_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""


class SharedRateLimiter:
    """RateLimiter's sliding window, kept in Redis; the local `fallback` while Redis is down."""

    def __init__(self, link: RedisLink, name: str, fallback: RateLimiter) -> None:
        self._link = link
        self._name = name
        self.fallback = fallback
        self.limit = fallback.limit
        self.window = fallback.window
        self._script = link.client.register_script(_RATE_LIMIT_LUA)
        self._ids = itertools.count()

    async def acquire(self, key: str) -> float | None:
        """Record a request; None if allowed, else seconds until the key may try again."""
        if self.limit <= 0:
            return None
        if self._link.up:
            member = f"{self._link.node_id}:{next(self._ids)}"
            try:
                wait_ms = await self._script(
                    keys=[self._link.key("ratelimit", self._name, key)],
                    args=[self.limit, int(self.window * 1000), member],
                )
            except Exception as exc:
                self._link.failed(exc)
            else:
                return None if not wait_ms else int(wait_ms) / 1000
        return self.fallback.hit(key)


# --- viewers -------------------------------------------------------------------------------

# ARGV: window ms, number of forgotten streams, their ids, then per touched stream: id, number of
# clients, client keys. Returns every stream with viewers as id, count, id, count, ...
_VIEWERS_LUA = """
local index = KEYS[1]
local prefix = KEYS[2]
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('DEL', prefix .. ARGV[i])
  redis.call('SREM', index, ARGV[i])
  i = i + 1
end
while i <= #ARGV do
  local sid = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local key = prefix .. sid
  i = i + 2
  for _ = 1, n do
    redis.call('ZADD', key, now, ARGV[i])
    i = i + 1
  end
  redis.call('PEXPIRE', key, window * 2)
  redis.call('SADD', index, sid)
end
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', index)) do
  local key = prefix .. sid
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local c = redis.call('ZCARD', key)
  if c == 0 then
    redis.call('SREM', index, sid)
  else
    table.insert(out, sid)
    table.insert(out, c)
  end
end
return out
"""


class SharedViewerTracker:
    """ViewerTracker's interface, counting distinct viewers across every process in Redis.

    `touch` records locally (the same local tracker single-node uses, which is also the fallback)
    and remembers the client for the next flush; `count`/`counts` answer from the snapshot the
    last flush read back (at most `flush_seconds` old), or from the local tracker while Redis is
    down. Enter it (async with) to run the flush loop.
    """

    def __init__(
        self,
        link: RedisLink,
        window_seconds: float,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self.local = ViewerTracker(window_seconds, clock)
        self._window_ms = int(window_seconds * 1000)
        self._flush_seconds = flush_seconds
        self._script = link.client.register_script(_VIEWERS_LUA)
        self._keys = [link.key("viewers"), link.key("viewers", "")]
        self._pending: dict[str, set[str]] = {}
        self._forgotten: set[str] = set()  # not to be counted, until a flush has deleted them
        self._snapshot: dict[str, int] | None = None  # None: no flush has succeeded since Redis came up
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SharedViewerTracker:
        self._task = asyncio.create_task(self._run(), name="redis-viewers")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Streams stopped at shutdown: their viewers leave Redis now, not a window later.
        if self._forgotten and self._link.up:
            with contextlib.suppress(Exception):
                await self.flush()

    def touch(self, stream_id: str, client_key: str) -> None:
        """Record an HLS fetch (no I/O: it waits in memory for the next flush)."""
        self.local.touch(stream_id, client_key)
        self._pending.setdefault(stream_id, set()).add(client_key)

    def count(self, stream_id: str) -> int:
        snapshot = self._current()
        if snapshot is None:
            return self.local.count(stream_id)
        return 0 if stream_id in self._forgotten else snapshot.get(stream_id, 0)

    def counts(self) -> dict[str, int]:
        snapshot = self._current()
        if snapshot is None:
            return self.local.counts()
        return {k: v for k, v in snapshot.items() if k not in self._forgotten}

    def forget(self, stream_id: str) -> None:
        self.local.forget(stream_id)
        self._pending.pop(stream_id, None)
        self._forgotten.add(stream_id)

    def _current(self) -> dict[str, int] | None:
        if not self._link.up:
            self._snapshot = None
        return self._snapshot

    async def flush(self) -> None:
        """Send the touches and forgets gathered since the last flush; read every count back."""
        pending, self._pending = self._pending, {}
        forgotten = set(self._forgotten)
        args: list[Any] = [self._window_ms, len(forgotten), *forgotten]
        for stream_id, clients in pending.items():
            args += [stream_id, len(clients), *clients]
        try:
            reply = await self._script(keys=self._keys, args=args)
        except Exception:
            # Touches are not kept for a retry: the local tracker has them, and a viewer still
            # watching touches again within seconds.
            self._snapshot = None
            raise
        self._forgotten -= forgotten
        it = iter(reply)
        self._snapshot = {
            (sid.decode() if isinstance(sid, bytes) else str(sid)): int(count)
            for sid, count in zip(it, it, strict=True)
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            if not self._link.up:
                self._pending.clear()  # the local tracker counts them meanwhile
                continue
            try:
                await self.flush()
            except Exception as exc:
                self._link.failed(exc)


class RedisCollector:
    """Prometheus series of the Redis link (registered on the platform's registry when [redis] is on).

    streamplat_redis_up                                      gauge, 1 while Redis answers
    streamplat_redis_events_total{outcome="sent"|"received"|"dropped"}   counter
    """

    def __init__(self, link: RedisLink, relay: EventRelay) -> None:
        self._link = link
        self._relay = relay

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "streamplat_redis_up", "1 while Redis answers ([redis] url), else 0.", value=int(self._link.up)
        )
        events = CounterMetricFamily(
            "streamplat_redis_events",
            "Events relayed to or from other processes through Redis, and dropped while it was away.",
            labels=["outcome"],
        )
        r = self._relay
        for outcome, value in (("sent", r.sent), ("received", r.received), ("dropped", r.dropped)):
            events.add_metric([outcome], value)
        yield events


__all__ = [
    "EventRelay",
    "RedisCollector",
    "RedisLink",
    "SharedRateLimiter",
    "SharedViewerTracker",
    "announce",
    "mask_url",
]
