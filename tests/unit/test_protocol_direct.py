"""Answers written by the httptools protocol itself (`http_protocol(direct=...)`), next to ASGI.

A real uvicorn server on a free port, spoken to over raw sockets. The `direct` callable here
answers two paths the way the Stream App's `DirectHls` answers live /hls/ files (header lines
and a body, or None); the ASGI app answers everything, the two paths included, and says so in
an `x-via` header. What is checked is the protocol's part: order under pipelining, HEAD,
keep-alive and close, flow control, and which requests it must leave to ASGI.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.unit.test_protocols import closed_by_server, connect, lifespan, thread_server

from streamplat.protocols import http_protocol

KEEP_ALIVE = 2
BIG = b"b" * (8 << 20)  # far more than a socket buffer takes while the client does not read
CALLS: list[str] = []


def body_for(path: str, query: bytes) -> bytes:
    return BIG if path.endswith("/big") else b"fast:" + query


def direct(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None
) -> tuple[bytes, bytes] | None:
    if path == "/hls/s/boom":
        raise RuntimeError("a bug in the direct answer")
    if path == "/hls/s/client":
        body = repr(client and client[0]).encode()  # the port differs per connection
        return b"content-length: %d\r\nx-via: direct\r\n" % len(body), body
    if path not in ("/hls/s/fast", "/hls/s/big"):
        return None
    CALLS.append(path)
    body = body_for(path, query)
    head = b"content-type: text/plain\r\ncontent-length: %d\r\nx-via: direct\r\n" % len(body)
    return head, b"" if method == "HEAD" else body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/hls/s/slow":
        await asyncio.sleep(0.05)  # still answering when the requests pipelined behind it are parsed
    if path == "/hls/s/client":
        body = repr(scope["client"] and scope["client"][0]).encode()
    elif path in ("/hls/s/fast", "/hls/s/big"):
        body = body_for(path, scope["query_string"])
    else:
        body = path.encode()
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"x-via", b"asgi"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


@pytest.fixture(name="port", scope="module")
def fixture_port() -> Iterator[int]:
    protocol = http_protocol("httptools", max_header_bytes=8192, header_timeout=5, direct=direct)
    with thread_server(app, protocol, timeout_keep_alive=KEEP_ALIVE) as port:
        yield port


class Reader:
    """Responses off one socket, in order; HEAD answers have no body whatever their length says."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def response(self, head: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        status = self.file.readline()
        assert status, "connection closed before a response"
        headers: dict[bytes, bytes] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip()] = value.strip()
        body = b"" if head else self.file.read(int(headers.get(b"content-length", b"0")))
        return status.rstrip(), headers, body


def test_pipelined_answers_keep_their_order_across_both_paths(port: int) -> None:
    CALLS.clear()
    paths = ["/hls/s/fast?1", "/hls/s/slow", "/hls/s/fast?2", "/other", "/hls/s/fast?3"]
    with connect(port) as sock:
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths))
        reader = Reader(sock)
        answers = [reader.response() for _ in paths]
    assert [body for _, _, body in answers] == [b"fast:1", b"/hls/s/slow", b"fast:2", b"/other", b"fast:3"]
    assert all(status == b"HTTP/1.1 200 OK" for status, _, _ in answers)
    # The first went out at once; the ones behind the slow ASGI answer waited for it (whichever
    # path then answered them), so nothing overtook it.
    assert answers[0][1][b"x-via"] == b"direct" and answers[1][1][b"x-via"] == b"asgi"
    assert answers[0][1][b"date"] and next(iter(answers[0][1])) == b"date"  # uvicorn's default header first


def test_head_keeps_the_length_without_a_body_and_the_connection_stays_open(port: int) -> None:
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD /hls/s/fast?abc HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = reader.response(head=True)
        assert status == b"HTTP/1.1 200 OK" and headers[b"x-via"] == b"direct"
        assert headers[b"content-length"] == b"8" and b"connection" not in headers
        sock.sendall(b"GET /hls/s/fast?abc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[2] == b"fast:abc"  # no stray HEAD body before it


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /hls/s/fast HTTP/1.0\r\n\r\n",
        b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
    ids=["http1.0", "connection-close"],
)
def test_a_closing_request_gets_connection_close_and_a_close(port: int, request_line: bytes) -> None:
    with connect(port) as sock:
        # A request pipelined after it is dropped, as uvicorn drops it.
        sock.sendall(request_line + b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = Reader(sock).response()
        assert status == b"HTTP/1.1 200 OK" and headers[b"x-via"] == b"direct" and body == b"fast:"
        assert headers[b"connection"] == b"close"
        assert list(headers)[-1] == b"connection"  # where uvicorn puts it: after the app's headers
        assert closed_by_server(sock, within=5)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n",
        b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
        b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        b"POST /hls/s/fast HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
        b"GET /hls/s/%66ast HTTP/1.1\r\nHost: x\r\n",
        b"GET http://x/hls/s/fast HTTP/1.1\r\nHost: x\r\n",
        b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n",
    ],
    ids=["range", "content-length", "chunked", "post", "escaped", "absolute-form", "upgrade"],
)
def test_requests_the_protocol_must_not_answer_go_to_asgi(port: int, request_head: bytes) -> None:
    CALLS.clear()
    with connect(port) as sock:
        sock.sendall(request_head + b"\r\n")
        status, headers, _ = Reader(sock).response()
    assert headers[b"x-via"] == b"asgi" and CALLS == []
    assert status.startswith(b"HTTP/1.1 ")


def test_an_idle_connection_after_a_direct_answer_closes_at_the_keep_alive_timeout(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Reader(sock).response()[1][b"x-via"] == b"direct"
        started = time.monotonic()
        assert closed_by_server(sock, within=KEEP_ALIVE + 10)
        assert time.monotonic() - started >= KEEP_ALIVE * 0.9


def test_a_connection_in_use_outlives_the_keep_alive_timeout_and_closes_when_idle(port: int) -> None:
    # The idle timer is armed once and pushed back by each direct answer, not re-armed per
    # request: requests every 0.5 s for over twice the timeout keep the connection, and it
    # still closes a whole timeout after the last one.
    with connect(port) as sock:
        reader = Reader(sock)
        started = time.monotonic()
        while time.monotonic() - started < KEEP_ALIVE * 2.5:
            sock.sendall(b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.response()[1][b"x-via"] == b"direct"
            time.sleep(0.5)
        last = time.monotonic() - 0.5
        assert closed_by_server(sock, within=KEEP_ALIVE + 10)
        assert time.monotonic() - last >= KEEP_ALIVE * 0.9


def test_an_asgi_answer_after_direct_ones_keeps_uvicorns_keep_alive(port: int) -> None:
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /hls/s/fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[1][b"x-via"] == b"direct"
        sock.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[1][b"x-via"] == b"asgi"
        started = time.monotonic()
        assert closed_by_server(sock, within=KEEP_ALIVE + 10)
        assert time.monotonic() - started >= KEEP_ALIVE * 0.9


def test_a_client_that_does_not_read_is_not_buffered_without_bound(port: int) -> None:
    CALLS.clear()
    count = 6
    with connect(port) as sock:
        sock.sendall(b"GET /hls/s/big HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        reader = Reader(sock)
        answers = [reader.response() for _ in range(count)]
    assert all(body == BIG for _, _, body in answers)
    # They arrive in one read, parsed while the first answer is written. 8 MiB does not fit in
    # the socket buffers: the transport paused writing after the first, and the rest went the
    # ASGI way, which waits for the client (uvicorn's flow control).
    assert 1 <= len(CALLS) < count
    assert answers[0][1][b"x-via"] == b"direct" and answers[-1][1][b"x-via"] == b"asgi"


def test_h11_keeps_every_request_on_asgi() -> None:
    limits = {"max_header_bytes": 1024, "header_timeout": 1.0}
    assert not hasattr(http_protocol("h11", **limits, direct=direct), "direct")  # type: ignore[arg-type]
    assert http_protocol("httptools", **limits, direct=direct).direct is direct  # type: ignore[arg-type, attr-defined]


def test_a_failing_direct_answer_is_logged_and_left_to_asgi(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="streamplat.http"), connect(port) as sock:
        sock.sendall(b"GET /hls/s/boom HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = Reader(sock).response()
    assert status == b"HTTP/1.1 200 OK" and headers[b"x-via"] == b"asgi" and body == b"/hls/s/boom"
    assert any("direct answer to /hls/s/boom failed" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "forwarded",
    [
        b"",
        b"X-Forwarded-For: 10.1.2.3\r\n",
        b"X-Forwarded-For: 10.9.9.9, 10.1.2.3\r\n",
        b"X-Forwarded-For: \r\n",
    ],
    ids=["none", "one", "chain", "empty"],
)
def test_the_client_is_the_one_the_asgi_scope_gets_behind_a_trusted_proxy(
    port: int, forwarded: bytes
) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default (ProxyHeadersMiddleware); viewers
    # are counted by this address, so both paths must agree on it.
    answers = []
    for extra in (b"", b"Content-Length: 0\r\n"):
        with connect(port) as sock:
            sock.sendall(b"GET /hls/s/client HTTP/1.1\r\nHost: x\r\n" + forwarded + extra + b"\r\n")
            answers.append(Reader(sock).response())
    (_, direct_headers, direct_body), (_, asgi_headers, asgi_body) = answers
    assert direct_headers[b"x-via"] == b"direct" and asgi_headers[b"x-via"] == b"asgi"
    assert direct_body == asgi_body
    if forwarded.strip().endswith(b"10.1.2.3"):
        assert direct_body == b"'10.1.2.3'"
