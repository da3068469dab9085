"""Real-time events over WebSocket (ws://host:main_port/ws), end to end.

A real server process, real FFmpeg publishing over SRT and the `websockets` client; the slow
client test runs the real Main App under uvicorn in the test's own process, because only there
can events be published faster than any real stream makes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import pytest
import uvicorn
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from streamplat.app import Platform, build_apps
from streamplat.auth.schemas import RegisterIn
from streamplat.config import load
from streamplat.events import StreamStatusChanged, ViewerCountChanged
from tests.integration.test_auth import bearer
from tests.support.media import Publisher, wait_for
from tests.support.server import ServerProcess, free_tcp_port, running_server

LIVE_ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60",
    "STREAMPLAT_WEBSOCKET__AUTH_TIMEOUT_SECONDS": "1",
}


@pytest.fixture(name="server", scope="module")
def fixture_live_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("realtime"), LIVE_ENV, db=db) as srv:
        yield srv


def ws_url(server: ServerProcess, token: str | None = None) -> str:
    return f"ws://{server.host}:{server.ports['main']}/ws" + (f"?token={token}" if token else "")


def open_ws(server: ServerProcess, token: str | None = None) -> ClientConnection:
    return connect(ws_url(server, token), open_timeout=10, proxy=None)


class Receiver(Protocol):
    """What the helpers below read from: websockets' sync client, or tests.support.cluster's
    LoopWebSocket (TLS through nginx)."""

    def recv(self, timeout: float | None = None) -> str | bytes: ...


def recv(ws: Receiver, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


Message = dict[str, Any]


def read_until(ws: Receiver, done: Callable[[Message], bool], timeout: float) -> list[Message]:
    """Every message up to and including the first one `done` accepts."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s; got {seen}")
        try:
            seen.append(recv(ws, left))
        except TimeoutError:
            continue
        if done(seen[-1]):
            return seen


def close_code(ws: ClientConnection, timeout: float = 10) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    assert closed.value.rcvd is not None, "the server sent no close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def create_and_start(server: ServerProcess, token: str) -> tuple[str, dict[str, Any]]:
    r = server.main.post("/api/streams", json={"name": "Realtime"}, headers=bearer(token))
    assert r.status_code == 201, r.text
    sid = r.json()["stream_id"]
    r = server.main.post(f"/api/streams/{sid}/start", headers=bearer(token))
    assert r.status_code == 200, r.text
    return sid, r.json()


def status_message(sid: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "stream_status" and m["stream_id"] == sid and m["status"] == status


# --- a stream's life, as a dashboard sees it ------------------------------------------------------


def test_a_published_stream_is_followed_to_its_recording(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    token = server.user_token("rtlife")
    with open_ws(server, token) as ws:
        welcome = recv(ws)
        assert welcome["type"] == "welcome" and welcome["user"]["username"] == "rtlife"
        assert set(welcome["user"]) == {"id", "username", "role"}
        sid, started = create_and_start(server, token)
        # -t: the publisher ends by itself, like an OBS user pressing "Stop Streaming".
        publishers.append(Publisher(started["srt_url"], duration=3).start())
        seen = read_until(ws, lambda m: status_message(sid, "waiting")(m) and "reason" in m, timeout=40)
        r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
        assert r.status_code == 200 and r.json()["status"] == "stopped"
        recording = ("recording_ready", "recording_failed")
        seen += read_until(ws, lambda m: m["type"] in recording and m["stream_id"] == sid, timeout=60)
    mine = [m for m in seen if m.get("stream_id") == sid and m["type"] != "viewer_count"]
    assert [m["type"] for m in mine] == ["stream_status"] * 4 + ["recording_ready"], mine
    assert [m["status"] for m in mine[:4]] == ["waiting", "active", "waiting", "stopped"]
    assert mine[0] == {"type": "stream_status", "stream_id": sid, "status": "waiting"}
    assert mine[1] == {"type": "stream_status", "stream_id": sid, "status": "active"}
    assert mine[2]["reason"].startswith("publisher disconnected")
    ready = mine[4]
    assert ready == {
        "type": "recording_ready",
        "stream_id": sid,
        "file_path": f"/recordings/vod/{sid}/video.mp4",
        "thumbnail_path": f"/recordings/vod/{sid}/thumbnail.jpg",
        "duration_seconds": ready["duration_seconds"],
    }
    assert 2 <= ready["duration_seconds"] <= 5
    # What the message says is true: the recording is there to play.
    assert server.vod.get(f"/api/v1/recordings/{sid}").json()["status"] == "ready"
    assert server.vod.head(ready["file_path"]).status_code == 200


def test_viewer_count_follows_hls_players(server: ServerProcess, publishers: list[Publisher]) -> None:
    token = server.user_token("rtviewers")
    sid, started = create_and_start(server, token)
    publishers.append(Publisher(started["srt_url"], duration=30).start())
    with open_ws(server, token) as ws:
        recv(ws)  # welcome
        ws.send(json.dumps({"type": "subscribe", "stream_ids": [sid]}))
        assert recv(ws) == {"type": "subscribed", "all": False, "stream_ids": [sid]}
        # Waited for through the status endpoint: fetching the playlist would make the test a viewer.
        wait_for(
            lambda: server.stream.get(f"/stream/{sid}/status").json()["hls_files_count"] >= 2,
            20,
            message="segments",
        )
        for agent in ("player-a/1.0", "player-b/1.0"):
            headers = {"User-Agent": agent}
            with httpx.Client(base_url=server.url("stream"), headers=headers, timeout=10) as player:
                text = player.get(f"/hls/{sid}/stream.m3u8").text
                segment = next(line for line in text.splitlines() if line and not line.startswith("#"))
                assert player.get(f"/hls/{sid}/{segment}").status_code == 200
        rising = read_until(ws, lambda m: m["type"] == "viewer_count" and m["count"] == 2, timeout=15)
        counts = [m["count"] for m in rising if m["type"] == "viewer_count"]
        assert counts in ([2], [1, 2]), rising
        assert {m["stream_id"] for m in rising} == {sid}
        detail = server.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()
        assert detail["viewer_count"] == 2

        assert server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)).status_code == 200
        falling = read_until(ws, lambda m: m["type"] == "viewer_count", timeout=15)
        assert falling[-1] == {"type": "viewer_count", "stream_id": sid, "count": 0}
        assert any(status_message(sid, "stopped")(m) for m in falling)
        # The ended stream's playlist stays readable until its recording is packaged, but reading
        # it no longer makes a live viewer.
        late = {"User-Agent": "late/1.0"}
        httpx.get(server.url("stream", f"/hls/{sid}/stream.m3u8"), headers=late, timeout=10)
        ws.send(json.dumps({"type": "ping"}))
        assert read_until(ws, lambda m: m["type"] == "pong", timeout=10)[-1] == {"type": "pong"}
        # Longer than the 2 s viewer beat: no "1 viewer" for a stopped stream. Other events may
        # come (the recording getting ready is quick on a fast database), but no viewer count.
        later: list[dict] = []
        with pytest.raises(TimeoutError):
            while True:
                later.append(json.loads(ws.recv(timeout=2.5)))
        assert not [m for m in later if m["type"] == "viewer_count"], later


# --- who may listen ---------------------------------------------------------------------------


def test_websocket_tokens_are_checked(server: ServerProcess) -> None:
    token = server.user_token("rtauth")
    with open_ws(server, "not-a-token") as ws:
        code, reason = close_code(ws)
    assert (code, reason.lower()) == (4401, "invalid or expired token")
    with open_ws(server) as ws:  # no token at all, and nothing said
        code, reason = close_code(ws)
    assert code == 4401 and "timed out" in reason
    with open_ws(server) as ws:
        ws.send(json.dumps({"type": "subscribe", "all": True}))
        code, reason = close_code(ws)
    assert code == 4401 and "auth" in reason
    with open_ws(server) as ws:
        ws.send(json.dumps({"type": "auth", "token": "forged"}))
        assert close_code(ws)[0] == 4401

    # Browsers: the token as the first message.
    with open_ws(server) as ws:
        ws.send(json.dumps({"type": "auth", "token": token}))
        assert recv(ws)["user"]["username"] == "rtauth"
        for bad in ("{", {"type": "shout"}, {"type": "subscribe", "stream_ids": ["../x"]}):
            ws.send(bad if isinstance(bad, str) else json.dumps(bad))
            reply = recv(ws)
            assert reply["type"] == "error" and reply["message"]
        ws.send(json.dumps({"type": "ping"}))
        assert recv(ws) == {"type": "pong"}  # still connected after three bad messages
    # A Bearer header works too, for clients that can send one.
    with connect(ws_url(server), additional_headers=bearer(token), proxy=None) as ws:
        assert recv(ws)["type"] == "welcome"


def test_subscribing_to_streams_narrows_the_events(server: ServerProcess) -> None:
    token = server.user_token("rtnarrow")
    r = server.main.post("/api/streams", json={"name": "Watched"}, headers=bearer(token))
    watched = r.json()["stream_id"]
    with open_ws(server, token) as everything, open_ws(server) as narrow:
        narrow.send(json.dumps({"type": "auth", "token": token}))
        recv(narrow), recv(everything)
        narrow.send(json.dumps({"type": "subscribe", "stream_ids": [watched]}))
        assert recv(narrow)["type"] == "subscribed"
        other, _ = create_and_start(server, token)
        server.main.post(f"/api/streams/{watched}/start", headers=bearer(token))
        # Per connection, messages keep the order of events: once the watched stream's
        # "waiting" is in, the other stream's earlier one would have come first.
        got = read_until(narrow, status_message(watched, "waiting"), timeout=10)
        assert [m["stream_id"] for m in got] == [watched]
        seen = read_until(everything, status_message(watched, "waiting"), timeout=10)
        assert [m["stream_id"] for m in seen if m["type"] == "stream_status"] == [other, watched]
        for sid in (other, watched):
            server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))


def test_sigterm_with_websocket_clients_connected_exits_cleanly(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory(LIVE_ENV)
    token = srv.user_token("rtsigterm")
    create_and_start(srv, token)
    with contextlib.ExitStack() as opened:
        clients = [opened.enter_context(open_ws(srv, token)) for _ in range(3)]
        for ws in clients:
            assert recv(ws)["type"] == "welcome"
        # Well within server.shutdown_timeout_seconds (15 s): the sockets do not hold the exit up.
        assert srv.stop(timeout=10) == 0, srv.logs()[-3000:]
        for ws in clients:
            # 1012 "service restart" from uvicorn; messages sent before it (the stream's "stopped")
            # may come first.
            code, _ = close_code(ws, timeout=5)
            assert code in (1001, 1012)
    assert "Traceback" not in srv.logs()


# --- a client that stops reading ----------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test runner owns the signals
        yield


def _handshake(port: int, token: str) -> tuple[socket.socket, bytes]:
    """A raw WebSocket client with a tiny receive buffer that will never read on its own."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += raw.recv(1)  # byte by byte: nothing past the response headers is consumed
    assert data.startswith(b"HTTP/1.1 101"), data
    return raw, data


def _read_frames(raw: socket.socket) -> list[tuple[int, bytes]]:
    """Every frame the server sent, up to and including its close frame (or EOF)."""
    raw.settimeout(15)
    buffer = b""
    frames: list[tuple[int, bytes]] = []
    while True:
        while len(buffer) >= 2:
            opcode, size, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, start = struct.unpack("!H", buffer[2:4])[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, start = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < start + size:
                break
            frames.append((opcode, buffer[start : start + size]))
            buffer = buffer[start + size :]
            if opcode == 8:
                return frames
        chunk = raw.recv(65536)
        if not chunk:
            return frames
        buffer += chunk


async def test_a_stalled_client_is_dropped_without_holding_up_the_others(tmp_path: Path) -> None:
    settings = load(
        None,
        environ={
            "STREAMPLAT_STORAGE__DATA_DIR": str(tmp_path),
            "STREAMPLAT_SERVER__MAIN_PORT": str(free_tcp_port()),
        },
    )
    sid = "33333333-3333-4333-8333-333333333333"
    async with Platform(settings) as platform:
        user = {"username": "stall", "email": "stall@example.com", "password": "password123"}
        await platform.auth.register(msgspec.convert(user, RegisterIn), None)
        token = (await platform.auth.login("stall@example.com", "password123")).access_token
        port = settings.server.main_port
        app = build_apps(platform)["main"]
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.01)
            stalled, _ = await asyncio.to_thread(_handshake, port, token)
            received: list[Message] = []
            progress = asyncio.Event()

            async def healthy_has(predicate: Callable[[], bool]) -> None:
                while not predicate():
                    progress.clear()
                    await progress.wait()

            async with async_connect(f"ws://127.0.0.1:{port}/ws?token={token}", proxy=None) as healthy:

                async def read() -> None:
                    async for text in healthy:
                        received.append(json.loads(text))
                        progress.set()

                reader = asyncio.create_task(read())
                await healthy_has(lambda: bool(received))  # welcomed, so both clients are registered
                assert platform.hub.client_count == 2
                # Flood until the stalled client is dropped: its socket buffers (about 1.6 MB of
                # kernel and uvicorn buffer on Linux) fill first, then its queue of 100.
                published = 0
                async with asyncio.timeout(60):
                    while platform.hub.client_count == 2:
                        assert published < 300_000, "the stalled client was never dropped"
                        await platform.bus.publish(ViewerCountChanged(sid, published))
                        published += 1
                        # Published no faster than the healthy client reads, so it stays far from
                        # its own queue limit; the stalled client never slows this loop down.
                        await healthy_has(lambda n=published: n - (len(received) - 1) <= 50)
                    await platform.bus.publish(StreamStatusChanged(sid, "stopped", 1))
                    await healthy_has(lambda: received[-1]["type"] == "stream_status")
                reader.cancel()
            # The healthy client got every event, in order, and is still welcome.
            assert received[0]["type"] == "welcome"
            assert [m["count"] for m in received[1:-1]] == list(range(published))
            assert received[-1] == {"type": "stream_status", "stream_id": sid, "status": "stopped"}
            # The stalled client, once it reads again, finds an in-order prefix and then 4408.
            frames = await asyncio.to_thread(_read_frames, stalled)
            stalled.close()
            texts = [json.loads(payload) for opcode, payload in frames if opcode == 1]
            assert texts[0]["type"] == "welcome"
            counts = [m["count"] for m in texts[1:]]
            assert counts == list(range(len(counts))) and 1000 < len(counts) < published
            opcode, payload = frames[-1]
            assert opcode == 8, "no close frame"
            code, reason = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
            assert code == 4408 and "too slow" in reason
            body, _ = platform.metrics.exposition()
            assert b'streamplat_websocket_disconnects_total{reason="slow"} 1.0' in body
        finally:
            server.should_exit = True
            await serving
