"""The WebSocket hub's rules, with in-memory sockets: shapes, subscriptions, auth, slow clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamplat.auth import Principal
from streamplat.errors import Unauthorized
from streamplat.events import (
    EventBus,
    IngestProgress,
    RecordingFailed,
    RecordingReady,
    StreamStatusChanged,
    ViewerCountChanged,
)
from streamplat.realtime import RealtimeHub

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"


class FakeSocket:
    """What the hub uses of a Litestar WebSocket. `stalled`: sends never complete (a client that
    stopped reading, with every buffer on the way full); its close frame still goes out."""

    def __init__(self, stalled: bool = False) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str | None] | None = None
        self.stalled = stalled
        self.changed = asyncio.Event()

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        self.sent.append(json.loads(text))
        self.changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self.changed.set()

    def say(self, message: Any) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.incoming.put_nowait({"type": "websocket.receive", "text": text})

    def hang_up(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def wait_for(self, predicate: Any) -> None:
        async with asyncio.timeout(5):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]


class FakeAuth:
    def __init__(self) -> None:
        self.tokens = {"good": Principal(7, "alice", "streamer"), "other": Principal(8, "bob", "viewer")}

    async def authenticate(self, token: str | None) -> Principal:
        if token not in self.tokens:
            raise Unauthorized("Invalid or expired token")
        return self.tokens[token]


@pytest.fixture(name="bus")
def fixture_bus() -> EventBus:
    return EventBus()


@pytest.fixture(name="auth")
def fixture_auth() -> FakeAuth:
    return FakeAuth()


@pytest.fixture(name="hub")
async def fixture_hub(bus: EventBus, auth: FakeAuth) -> AsyncIterator[RealtimeHub]:
    async with RealtimeHub(bus, auth, queue_size=10, auth_timeout_seconds=0.2) as hub:
        yield hub


async def connect(
    hub: RealtimeHub, token: str | None = "good", stalled: bool = False
) -> tuple[FakeSocket, asyncio.Task[None]]:
    socket = FakeSocket(stalled)
    task = asyncio.create_task(hub.serve(socket, token))  # type: ignore[arg-type]
    if token is not None and not stalled:
        await socket.wait_for(lambda s: s.sent or s.closed)
    return socket, task


async def test_events_reach_clients_in_the_spec_shapes(hub: RealtimeHub, bus: EventBus) -> None:
    everyone, t1 = await connect(hub)
    only_a, t2 = await connect(hub)
    assert everyone.sent == [{"type": "welcome", "user": {"id": 7, "username": "alice", "role": "streamer"}}]
    only_a.say({"type": "subscribe", "stream_ids": [A]})
    await only_a.wait_for(lambda s: s.of_type("subscribed"))
    assert only_a.of_type("subscribed") == [{"type": "subscribed", "all": False, "stream_ids": [A]}]

    for stream_id in (A, B):
        await bus.publish(StreamStatusChanged(stream_id, "waiting", 7))
        await bus.publish(StreamStatusChanged(stream_id, "stopped", 7, "server shut down"))
        await bus.publish(ViewerCountChanged(stream_id, 3))
        await bus.publish(IngestProgress(stream_id, 800.0, 30.0, 1.0))  # not for browsers
        await bus.publish(
            RecordingReady(
                stream_id,
                7,
                12.6,
                f"/recordings/vod/{stream_id}/video.mp4",
                f"/recordings/vod/{stream_id}/thumbnail.jpg",
                3.0,
            )
        )
        await bus.publish(RecordingFailed(stream_id, 7, "no video"))
    await everyone.wait_for(lambda s: len(s.sent) == 11)
    await only_a.wait_for(lambda s: len(s.sent) == 7)
    expected_a = [
        {"type": "stream_status", "stream_id": A, "status": "waiting"},
        {"type": "stream_status", "stream_id": A, "status": "stopped", "reason": "server shut down"},
        {"type": "viewer_count", "stream_id": A, "count": 3},
        {
            "type": "recording_ready",
            "stream_id": A,
            "file_path": f"/recordings/vod/{A}/video.mp4",
            "thumbnail_path": f"/recordings/vod/{A}/thumbnail.jpg",
            "duration_seconds": 13,
        },
        {"type": "recording_failed", "stream_id": A, "reason": "no video"},
    ]
    assert only_a.sent[2:] == expected_a
    assert everyone.sent[1:6] == expected_a and {m["stream_id"] for m in everyone.sent[6:]} == {B}

    only_a.say({"type": "subscribe", "all": True})
    await only_a.wait_for(lambda s: len(s.of_type("subscribed")) == 2)
    await bus.publish(ViewerCountChanged(B, 1))
    await only_a.wait_for(lambda s: s.sent[-1] == {"type": "viewer_count", "stream_id": B, "count": 1})
    for socket in (everyone, only_a):
        socket.hang_up()
    await asyncio.gather(t1, t2)
    assert hub.client_count == 0 and everyone.closed is None


async def test_bad_messages_are_answered_and_the_connection_stays(hub: RealtimeHub, bus: EventBus) -> None:
    socket, task = await connect(hub)
    bad: list[Any] = [
        "{",
        "[1]",
        {"type": "dance"},
        {"type": "subscribe"},
        {"type": "subscribe", "stream_ids": ["x"]},
        {"type": "subscribe", "stream_ids": "abc"},
        "x" * 70_000,
    ]
    for message in bad:
        socket.say(message)
    socket.incoming.put_nowait({"type": "websocket.receive", "bytes": b"{}"})
    socket.say({"type": "ping"})
    await socket.wait_for(lambda s: s.of_type("pong"))
    errors = socket.of_type("error")
    assert len(errors) == 8 and all(e["message"] for e in errors)
    assert "dance" in errors[2]["message"] and "stream_ids" in errors[3]["message"]
    assert "'x'" in errors[4]["message"]
    assert "too long" in errors[6]["message"] and "text" in errors[7]["message"]
    await bus.publish(ViewerCountChanged(A, 2))
    await socket.wait_for(lambda s: s.sent[-1]["type"] == "viewer_count")
    assert socket.closed is None
    socket.hang_up()
    await task


async def test_tokens_are_required_and_checked(hub: RealtimeHub, auth: FakeAuth) -> None:
    bad, _ = await connect(hub, "forged")
    assert bad.closed == (4401, "Invalid or expired token") and bad.sent == []

    silent, task = await connect(hub, None)
    await task  # the auth timeout (0.2 s here) ends it
    assert silent.closed is not None and silent.closed[0] == 4401 and "timed out" in (silent.closed[1] or "")

    rude, task = await connect(hub, None)
    rude.say({"type": "ping"})
    await task
    assert rude.closed is not None and rude.closed[0] == 4401 and "auth" in (rude.closed[1] or "")

    late, task = await connect(hub, None)
    late.say({"type": "auth", "token": "other"})
    await late.wait_for(lambda s: s.sent)
    assert late.sent == [{"type": "welcome", "user": {"id": 8, "username": "bob", "role": "viewer"}}]
    assert hub.client_count == 1
    # A new token may replace the old one on an open connection; a bad one ends it.
    late.say({"type": "auth", "token": "nope"})
    await task
    assert late.closed == (4401, "Invalid or expired token") and hub.client_count == 0


async def test_a_revoked_token_ends_the_connection(bus: EventBus, auth: FakeAuth) -> None:
    async with RealtimeHub(bus, auth, revalidate_seconds=0.05) as hub:
        socket, task = await connect(hub)
        del auth.tokens["good"]  # expired, or the user was deactivated
        await task
    assert socket.closed == (4401, "Invalid or expired token")


async def test_a_stalled_client_is_dropped_and_the_others_get_everything(
    hub: RealtimeHub, bus: EventBus
) -> None:
    healthy, t1 = await connect(hub)
    stalled, t2 = await connect(hub, stalled=True)
    for n in range(500):
        # The bus awaits the hub's handler: this would hang if the hub waited for the stalled socket.
        await asyncio.wait_for(bus.publish(ViewerCountChanged(A, n)), 1)
        if n % 5 == 0:
            await asyncio.sleep(0)  # let the healthy sender drain (queue_size is 10 here)
    await t2
    assert stalled.closed is not None and stalled.closed[0] == 4408
    assert "too slow" in (stalled.closed[1] or "")
    await healthy.wait_for(lambda s: len(s.of_type("viewer_count")) == 500)
    assert [m["count"] for m in healthy.of_type("viewer_count")] == list(range(500))
    assert healthy.closed is None and hub.client_count == 1
    healthy.hang_up()
    await t1


async def test_shutdown_closes_every_client(bus: EventBus, auth: FakeAuth) -> None:
    async with RealtimeHub(bus, auth) as hub:
        sockets = [(await connect(hub))[0] for _ in range(3)]
        assert hub.client_count == 3
    assert [s.closed for s in sockets] == [(1001, "server shutting down")] * 3
    assert hub.client_count == 0
    late, task = await connect(hub)
    await task
    assert late.closed == (1001, "server shutting down")
