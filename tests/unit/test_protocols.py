"""Header size (431) and header time (408/close) limits, with both parsers uvicorn can use.

A real uvicorn server on a free port with a tiny ASGI app, spoken to over raw sockets, so the
bytes on the wire are exactly what a client sends (httpx would refuse to send some of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from tests.support.server import free_tcp_port

from streamplat.protocols import http_protocol

MAX_HEADER_BYTES = 8192
HEADER_TIMEOUT = 1.0


async def lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's side of uvicorn's lifespan: every startup and shutdown completes."""
    while True:
        kind = (await receive())["type"]
        await send({"type": kind + ".complete"})
        if kind == "lifespan.shutdown":
            return


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with the number of body bytes it read."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"received": size}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ThreadServer(uvicorn.Server):
    # Signals can only be handled by the main thread; the test stops the server itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def thread_server(app: Any, http: type[asyncio.Protocol], timeout_keep_alive: int) -> Iterator[int]:
    """A uvicorn server on a free port with protocol class `http`, in a thread of its own; its port."""
    port = free_tcp_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        log_config=None,
        access_log=False,
        timeout_keep_alive=timeout_keep_alive,
    )
    server = ThreadServer(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.fixture(name="port", params=["h11", "httptools"])
def fixture_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A uvicorn server with the limited protocol of each parser."""
    protocol = http_protocol(request.param, max_header_bytes=MAX_HEADER_BYTES, header_timeout=HEADER_TIMEOUT)
    with thread_server(echo_app, protocol, timeout_keep_alive=30) as port:
        yield port


def connect(port: int) -> socket.socket:
    READERS.clear()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next HTTP/1.1 response on `sock` (Content-Length body); pipelined ones stay buffered."""
    reader = READERS.setdefault(sock.fileno(), sock.makefile("rb"))
    status_line = reader.readline()
    assert status_line, "connection closed before a response"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return status, headers, body


READERS: dict[int, Any] = {}


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_oversized_headers_get_431_with_the_error_body(port: int) -> None:
    with connect(port) as sock:
        # Sent whole, as a client with a huge token would: 1 MiB of Authorization.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"x" * (1 << 20) + b"\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 431
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body) == {
        "error": "Request Header Fields Too Large",
        "message": f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
        "code": 431,
    }


def test_many_header_lines_count_like_one_big_one(port: int) -> None:
    lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100) for i in range(200))
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        assert read_response(sock)[0] == 431


def test_headers_under_the_limit_and_a_big_body_are_served(port: int) -> None:
    body = b"z" * (4 * MAX_HEADER_BYTES)  # the body never counts as headers, even in one packet
    near_limit = b"X-Big: " + b"h" * (MAX_HEADER_BYTES - 200) + b"\r\n"
    with connect(port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\n" + near_limit + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        status, _, answer = read_response(sock)
        assert status == 200 and json.loads(answer) == {"received": len(body)}
        # The same connection serves the next request (keep-alive), also when pipelined.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 200


def test_headers_not_finished_in_time_get_408_and_a_close(port: int) -> None:
    with connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        # Trickling more bytes does not reset the clock (that is what a slowloris client does).
        for _ in range(3):
            time.sleep(HEADER_TIMEOUT / 4)
            sock.sendall(b"X-Slow: 1\r\n")
        status, _, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert status == 408 and json.loads(body)["code"] == 408
        assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 5
        assert closed_by_server(sock, within=5)


def test_a_silent_connection_is_closed_after_the_header_timeout(port: int) -> None:
    with connect(port) as sock:
        started = time.monotonic()
        assert closed_by_server(sock, within=HEADER_TIMEOUT + 5)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        # Between requests the keep-alive timeout (30 s here) applies, not the header timeout.
        time.sleep(HEADER_TIMEOUT * 2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_http_protocol_knows_its_parsers() -> None:
    assert http_protocol("h11", max_header_bytes=1024, header_timeout=1).__name__ == "LimitedH11Protocol"
    assert (
        http_protocol("httptools", max_header_bytes=1024, header_timeout=1).__name__
        == "LimitedHttpToolsProtocol"
    )
    with pytest.raises(ValueError, match="unknown HTTP parser"):
        http_protocol("h2", max_header_bytes=1024, header_timeout=1)
