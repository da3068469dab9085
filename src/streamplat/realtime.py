"""Real-time events for browsers: ws://<host>:<main_port>/ws.

    client -> server  {"type": "auth", "token": "..."}            first message, when no ?token= was sent
                      {"type": "subscribe", "stream_ids": [...]}  only these streams from now on
                      {"type": "subscribe", "all": true}          every stream (the default)
                      {"type": "ping"}
    server -> client  {"type": "welcome", "user": {"id", "username", "role"}}    first, once authenticated
                      {"type": "subscribed", "all": bool, "stream_ids": [...]}   answer to subscribe
                      {"type": "stream_status", "stream_id", "status"[, "reason"]}
                      {"type": "viewer_count", "stream_id", "count"}
                      {"type": "recording_ready", "stream_id", "file_path", "thumbnail_path",
                       "duration_seconds"}
                      {"type": "recording_failed", "stream_id", "reason"}
                      {"type": "pong"}
                      {"type": "error", "message"}   a bad client message; the connection stays open
    close codes       4401  missing, invalid or expired token (checked again every minute)
                      4408  the client fell `websocket.queue_size` messages behind
                      1001  the platform is shutting down (uvicorn's own shutdown says 1012 first)

How an event travels: `EventBus.publish` awaits the hub's handlers on the publisher's path
(inside a stop request, inside an FFmpeg supervisor task), so a handler only encodes the
message once and `put_nowait`s it into the bounded queue of every interested client; it never
touches a socket. Each connection has its own sender task draining its queue into its socket,
so a client that does not read only fills its own queue, and is disconnected when that is
full instead of holding memory or delaying anyone. Dead peers are found by uvicorn's protocol
pings (`ws_ping_interval`/`ws_ping_timeout`), which browsers answer on their own.

Every signed-in user may follow every stream: the same data is readable by any signed-in user
from GET /api/streams/{id} and the VOD port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from streamplat.auth import Principal, bearer_token
from streamplat.errors import Unauthorized
from streamplat.events import (
    EventBus,
    RecordingFailed,
    RecordingReady,
    StreamStatusChanged,
    ViewerCountChanged,
)
from streamplat.streams import is_stream_id

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
# Why a client went, as a fixed word for metrics.
_CLOSE_WORDS = {CLOSE_UNAUTHORIZED: "auth", CLOSE_TOO_SLOW: "slow", CLOSE_GOING_AWAY: "shutdown"}

REVALIDATE_SECONDS = 60.0  # a token that expired or a user deactivated meanwhile ends the connection
CLOSE_TIMEOUT_SECONDS = 5.0  # a close frame a stalled client never makes room for is given up on
MAX_MESSAGE_CHARS = 64 * 1024
MAX_SUBSCRIBED_STREAMS = 1000
_EXPECTED = (
    'expected {"type": "subscribe", "stream_ids": [...]}, {"type": "subscribe", "all": true}'
    ' or {"type": "ping"}'
)


# --- the wire ------------------------------------------------------------------------------------


class WelcomeUser(msgspec.Struct):
    id: int
    username: str
    role: str


class Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    user: WelcomeUser


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="type"):
    all: bool
    stream_ids: list[str]


class StreamStatusMessage(msgspec.Struct, tag="stream_status", tag_field="type", omit_defaults=True):
    stream_id: str
    status: str
    reason: str | None = None


class ViewerCountMessage(msgspec.Struct, tag="viewer_count", tag_field="type"):
    stream_id: str
    count: int


class RecordingReadyMessage(msgspec.Struct, tag="recording_ready", tag_field="type"):
    stream_id: str
    file_path: str
    thumbnail_path: str
    duration_seconds: int  # whole seconds, as GET /api/v1/recordings/{id} says


class RecordingFailedMessage(msgspec.Struct, tag="recording_failed", tag_field="type"):
    stream_id: str
    reason: str


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


class ErrorMessage(msgspec.Struct, tag="error", tag_field="type"):
    message: str


class AuthIn(msgspec.Struct, tag="auth", tag_field="type"):
    token: str


class SubscribeIn(msgspec.Struct, tag="subscribe", tag_field="type"):
    stream_ids: list[str] | None = None
    all: bool = False


class PingIn(msgspec.Struct, tag="ping", tag_field="type"):
    pass


_decode_client = msgspec.json.Decoder(AuthIn | SubscribeIn | PingIn).decode
_encode = msgspec.json.Encoder().encode


def encode(message: msgspec.Struct) -> str:
    """One server message as the text of a WebSocket frame (text frames: browsers get strings)."""
    return _encode(message).decode()


def _close_reason(text: str) -> str:
    # A close frame's reason may hold at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


# --- the hub -------------------------------------------------------------------------------------


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal: ...


class HubObserver(Protocol):
    """What the hub reports (streamplat.metrics.PlatformMetrics)."""

    def websocket_opened(self) -> None: ...
    def websocket_closed(self, reason: str) -> None: ...
    def websocket_refused(self) -> None: ...


class _NoObserver:
    def websocket_opened(self) -> None:
        pass

    def websocket_closed(self, reason: str) -> None:
        pass

    def websocket_refused(self) -> None:
        pass


@dataclass(eq=False)
class _Client:
    principal: Principal
    token: str
    queue: asyncio.Queue[str]
    streams: frozenset[str] | None = None  # None: every stream
    close: tuple[int, str] | None = None  # set once the hub decided to end the connection
    kicked: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, stream_id: str) -> bool:
        return self.streams is None or stream_id in self.streams

    def offer(self, text: str) -> None:
        """Queue a message without waiting; a full queue ends the connection instead."""
        if self.close is not None:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            waiting = self.queue.maxsize
            self.kick(CLOSE_TOO_SLOW, f"too slow: {waiting} messages waiting; reconnect and keep reading")

    def kick(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close = (code, _close_reason(reason))
            self.kicked.set()


class RealtimeHub:
    """Forwards stream events from the bus to WebSocket clients. Enter it (async with) to run it."""

    def __init__(
        self,
        bus: EventBus,
        auth: Authenticator,
        *,
        queue_size: int = 100,
        auth_timeout_seconds: float = 5.0,
        revalidate_seconds: float = REVALIDATE_SECONDS,
        observer: HubObserver | None = None,
        remote: EventBus | None = None,
    ) -> None:
        """`remote`: events raised by other processes (streamplat.cluster), forwarded like local ones."""
        self._bus = bus
        self._buses = [bus] if remote is None else [bus, remote]
        self._auth = auth
        self._queue_size = queue_size
        self._auth_timeout = auth_timeout_seconds
        self._revalidate_seconds = revalidate_seconds
        self._observer: HubObserver = observer or _NoObserver()
        self._clients: set[_Client] = set()
        self._connections = 0  # serve() calls running, authenticated or not
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    @property
    def client_count(self) -> int:
        """Clients connected and authenticated right now."""
        return len(self._clients)

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RealtimeHub:
        for bus in self._buses:
            bus.subscribe(StreamStatusChanged, self._on_status)
            bus.subscribe(ViewerCountChanged, self._on_viewers)
            bus.subscribe(RecordingReady, self._on_recording_ready)
            bus.subscribe(RecordingFailed, self._on_recording_failed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Normally uvicorn has closed every socket (1012) before the platform stops; this covers
        # connections still open (an embedding without uvicorn's shutdown, a stalled client).
        self._closing = True
        for bus in self._buses:
            bus.unsubscribe(StreamStatusChanged, self._on_status)
            bus.unsubscribe(ViewerCountChanged, self._on_viewers)
            bus.unsubscribe(RecordingReady, self._on_recording_ready)
            bus.unsubscribe(RecordingFailed, self._on_recording_failed)
        for client in list(self._clients):
            client.kick(CLOSE_GOING_AWAY, "server shutting down")
        # Bounded: each connection gives up on a close frame after CLOSE_TIMEOUT_SECONDS.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT_SECONDS + 1)

    # --- events -> queues (never awaits) -----------------------------------------------------

    def _broadcast(self, stream_id: str, message: msgspec.Struct) -> None:
        if not self._clients:
            return
        text = encode(message)  # once, whatever the number of clients
        for client in list(self._clients):
            if client.wants(stream_id):
                client.offer(text)

    def _on_status(self, event: StreamStatusChanged) -> None:
        self._broadcast(event.stream_id, StreamStatusMessage(event.stream_id, event.status, event.reason))

    def _on_viewers(self, event: ViewerCountChanged) -> None:
        self._broadcast(event.stream_id, ViewerCountMessage(event.stream_id, event.count))

    def _on_recording_ready(self, event: RecordingReady) -> None:
        message = RecordingReadyMessage(
            event.stream_id, event.file_path, event.thumbnail_path, round(event.duration_seconds)
        )
        self._broadcast(event.stream_id, message)

    def _on_recording_failed(self, event: RecordingFailed) -> None:
        self._broadcast(event.stream_id, RecordingFailedMessage(event.stream_id, event.reason))

    # --- one connection ----------------------------------------------------------------------

    async def serve(self, socket: WebSocket[Any, Any, Any], token: str | None) -> None:
        """Run one client from accept to close; `token` is the ?token= (or header) token, if any."""
        self._connections += 1
        self._idle.clear()
        try:
            await self._serve(socket, token)
        finally:
            self._connections -= 1
            if not self._connections:
                self._idle.set()

    async def _serve(self, socket: WebSocket[Any, Any, Any], token: str | None) -> None:
        await socket.accept()
        if self._closing:
            await self._close(socket, CLOSE_GOING_AWAY, "server shutting down")
            return
        principal, token = await self._authenticate(socket, token)
        if principal is None or token is None:
            self._observer.websocket_refused()
            return
        client = _Client(principal, token, asyncio.Queue(self._queue_size))
        # Queued before the client is registered, so nothing can come before it.
        client.offer(encode(_welcome(principal)))
        self._clients.add(client)
        self._observer.websocket_opened()
        log.info("websocket client connected user_id=%s", principal.id)
        try:
            await self._run(socket, client)
        finally:
            # Unregistered before any close frame is tried: a stalled client may hold that up.
            self._clients.discard(client)
            word = "client" if client.close is None else _CLOSE_WORDS.get(client.close[0], "error")
            self._observer.websocket_closed(word)
            if word == "slow":
                log.warning(
                    "websocket client user_id=%s dropped: %d messages waiting",
                    client.principal.id,
                    self._queue_size,
                )
            else:
                log.info("websocket client user_id=%s gone (%s)", client.principal.id, word)
        if client.close is not None:
            await self._close(socket, *client.close)

    async def _authenticate(
        self, socket: WebSocket[Any, Any, Any], token: str | None
    ) -> tuple[Principal | None, str | None]:
        if token is None:
            # Browsers cannot set headers on a WebSocket: the token may come as the first message.
            try:
                message = await asyncio.wait_for(socket.receive(), self._auth_timeout)
            except TimeoutError:
                reason = "authentication timed out: send ?token= or an auth message"
                await self._close(socket, CLOSE_UNAUTHORIZED, reason)
                return None, None
            except WebSocketDisconnect:
                return None, None
            if message["type"] != "websocket.receive":
                return None, None
            first = _decode_quietly(message.get("text") or message.get("bytes") or b"")
            if not isinstance(first, AuthIn):
                reason = 'authentication required: send ?token= or first {"type": "auth", "token": "..."}'
                await self._close(socket, CLOSE_UNAUTHORIZED, reason)
                return None, None
            token = first.token
        try:
            return await self._auth.authenticate(token), token
        except Unauthorized as exc:
            await self._close(socket, CLOSE_UNAUTHORIZED, exc.message)
            return None, None

    async def _run(self, socket: WebSocket[Any, Any, Any], client: _Client) -> None:
        """Receive, send and re-check the token until one of them ends (or the hub kicks the client)."""
        tasks = {
            asyncio.create_task(self._receive(socket, client), name="ws-receive"),
            asyncio.create_task(self._send(socket, client), name="ws-send"),
            asyncio.create_task(self._revalidate(client), name="ws-revalidate"),
            asyncio.create_task(client.kicked.wait(), name="ws-kicked"),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A sender blocked on a full socket is cancelled here: nothing half-written, as the
            # ASGI server writes a frame whole once the socket has room.
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not _is_disconnect(result):
                    log.error("websocket connection failed", exc_info=result)
                    client.kick(CLOSE_INTERNAL_ERROR, "internal error")

    async def _receive(self, socket: WebSocket[Any, Any, Any], client: _Client) -> None:
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            reply = await self._answer(client, message.get("text"), message.get("bytes"))
            if reply is not None:
                client.offer(encode(reply))

    async def _answer(self, client: _Client, text: str | None, data: bytes | None) -> msgspec.Struct | None:
        """The reply to one client message (None: no reply)."""
        if text is None:
            return ErrorMessage("send JSON text frames, not binary ones")
        if len(text) > MAX_MESSAGE_CHARS:
            return ErrorMessage(f"message too long (at most {MAX_MESSAGE_CHARS} characters)")
        try:
            message = _decode_client(text)
        except msgspec.DecodeError as exc:
            return ErrorMessage(f"invalid message ({exc}); {_EXPECTED}")
        except RecursionError:  # unknown fields are skipped, but msgspec still recurses into them
            return ErrorMessage(f"invalid message (nested too deeply); {_EXPECTED}")
        if isinstance(message, PingIn):
            return Pong()
        if isinstance(message, SubscribeIn):
            return self._subscribe(client, message)
        # A fresh token (e.g. after a refresh) keeps the connection alive past the old one's expiry.
        try:
            client.principal = await self._auth.authenticate(message.token)
        except Unauthorized as exc:
            client.kick(CLOSE_UNAUTHORIZED, exc.message)
            return None
        client.token = message.token
        return _welcome(client.principal)

    @staticmethod
    def _subscribe(client: _Client, message: SubscribeIn) -> msgspec.Struct:
        if message.all:
            client.streams = None
            return Subscribed(all=True, stream_ids=[])
        if message.stream_ids is None:
            return ErrorMessage('subscribe needs "stream_ids": [...] or "all": true')
        if len(message.stream_ids) > MAX_SUBSCRIBED_STREAMS:
            return ErrorMessage(f"subscribe to at most {MAX_SUBSCRIBED_STREAMS} streams at once")
        bad = [s for s in message.stream_ids if not is_stream_id(s)]
        if bad:
            return ErrorMessage(f"not stream ids: {', '.join(repr(s[:40]) for s in bad[:3])}")
        client.streams = frozenset(message.stream_ids)
        return Subscribed(all=False, stream_ids=sorted(client.streams))

    @staticmethod
    async def _send(socket: WebSocket[Any, Any, Any], client: _Client) -> None:
        while True:
            await socket.send_text(await client.queue.get())

    async def _revalidate(self, client: _Client) -> None:
        while True:
            await asyncio.sleep(self._revalidate_seconds)
            try:
                client.principal = await self._auth.authenticate(client.token)
            except Unauthorized as exc:
                client.kick(CLOSE_UNAUTHORIZED, exc.message)
                return
            except Exception:
                # The database may be down for a moment; the next check decides.
                log.warning("websocket token re-check failed user_id=%s", client.principal.id, exc_info=True)

    @staticmethod
    async def _close(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(socket.close(code, _close_reason(reason)), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            log.info("websocket close %s not sent: the client reads nothing", code)
        except Exception as exc:
            if not _is_disconnect(exc):
                raise


def _welcome(principal: Principal) -> Welcome:
    return Welcome(WelcomeUser(principal.id, principal.username, principal.role))


def _decode_quietly(data: str | bytes) -> AuthIn | SubscribeIn | PingIn | None:
    try:
        message: AuthIn | SubscribeIn | PingIn = _decode_client(data)
        return message
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None


def _is_disconnect(exc: BaseException) -> bool:
    # Litestar raises WebSocketDisconnect, uvicorn ClientDisconnected (an OSError), others OSError.
    return isinstance(exc, WebSocketDisconnect | OSError)


@websocket("/ws", name="events")
async def events_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """Real-time stream events (stream_status, viewer_count, recording_ready, recording_failed)."""
    hub: RealtimeHub = socket.app.state.platform.hub
    await hub.serve(socket, bearer_token(socket))


__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_TOO_SLOW",
    "CLOSE_UNAUTHORIZED",
    "RealtimeHub",
    "encode",
    "events_socket",
]
