"""Live /hls/ answers written by the Stream App's HTTP protocol (protocols.py + hls/asgi.py
`DirectHls`) against the same answers through ASGI (`HlsFastPath`), on a real server with a
real FFmpeg publisher, over raw sockets so the bytes compared are the bytes on the wire.

A plain GET/HEAD of a playlist, part, segment or init in memory is answered by the protocol; the
same request with `Content-Length: 0` (a body, even empty) goes through uvicorn's ASGI cycle,
the request-id/metrics middleware and `HlsFastPath`. Both must say the same thing.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from tests.integration.test_llhls import LIVE_ENV, Live, last_part, parts, uris
from tests.support.media import Publisher
from tests.support.server import ServerProcess, running_server

ENV = {**LIVE_ENV, "STREAMPLAT_LOGGING__HLS_ACCESS_LOG": "true"}
ORIGIN = b"http://player.example"
VIA_ASGI = b"Content-Length: 0\r\n"


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("hlsdirect"), ENV) as srv:
        yield srv


@pytest.fixture(name="live", scope="module")
def fixture_live(server: ServerProcess) -> Iterator[Live]:
    publishers: list[Publisher] = []
    live = Live(server, publishers, "direct1")
    live.publish()
    live.wait_segments(3)
    yield live
    for p in publishers:
        p.kill()


def exchange(
    server: ServerProcess, raw: bytes, count: int = 1, head: bool = False
) -> list[tuple[bytes, bytes]]:
    """Send `raw` (one or more requests) on one connection; the `count` answers as (head, body)."""
    with socket.create_connection(("127.0.0.1", server.ports["stream"]), timeout=20) as sock:
        sock.sendall(raw)
        reader = sock.makefile("rb")
        answers = []
        for _ in range(count):
            lines = []
            while (line := reader.readline()) not in (b"\r\n", b""):
                lines.append(line)
            assert lines, "connection closed before an answer"
            top = b"".join(lines)
            length = re.search(rb"(?im)^content-length: (\d+)", top)
            body = b"" if head or length is None else reader.read(int(length.group(1)))
            answers.append((top, body))
        return answers


def request(method: str, path: str, extra: bytes = b"", request_id: bytes = b"direct-test-1") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: direct-test\r\n".encode()
        + b"Origin: "
        + ORIGIN
        + b"\r\nX-Request-ID: "
        + request_id
        + b"\r\n"
        + extra
        + b"\r\n"
    )


def without(head: bytes, *names: bytes) -> bytes:
    """The head with the lines of `names` taken out (values that differ per request)."""
    keep = [line for line in head.split(b"\r\n") if line.split(b":")[0].lower() not in names]
    return b"\r\n".join(keep)


def names(live: Live) -> dict[str, str]:
    text = live.playlist()
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    assert init is not None
    return {
        "playlist": "stream.m3u8",
        "part": parts(text)[-2],
        "segment": uris(text)[-1],
        "init": init.group(1),
    }


def test_the_server_uses_the_direct_path(server: ServerProcess) -> None:
    assert "live /hls/ answers from memory are written by the Stream App's HTTP protocol" in server.logs()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_direct_answers_are_the_asgi_answers_byte_for_byte(
    server: ServerProcess, live: Live, method: str
) -> None:
    for kind, name in names(live).items():
        path = f"/hls/{live.sid}/{name}"
        head = method == "HEAD"
        [(direct_head, direct_body)] = exchange(server, request(method, path), head=head)
        [(asgi_head, asgi_body)] = exchange(server, request(method, path, VIA_ASGI), head=head)
        assert direct_head.startswith(b"HTTP/1.1 200 OK\r\ndate: "), (kind, direct_head)
        expected = (
            b"HTTP/1.1 200 OK\r\n",
            b"content-type: ",
            b"access-control-allow-origin: *\r\n",  # cors_origins = ["*"] by default
            b"x-request-id: direct-test-1\r\n",
        )
        assert all(piece in direct_head for piece in expected), (kind, direct_head)
        if kind == "playlist":  # may have grown by a part between the two requests
            assert without(direct_head, b"date", b"content-length") == without(
                asgi_head, b"date", b"content-length"
            )
            assert b"cache-control: no-cache\r\n" in direct_head
            assert direct_body.startswith(b"#EXTM3U") or head
        else:
            assert without(direct_head, b"date") == without(asgi_head, b"date"), kind
            assert b"cache-control: public, max-age=31536000, immutable\r\n" in direct_head
            assert direct_body == asgi_body and (head or direct_body), kind
        assert head is (direct_body == b"")


def test_pipelined_and_closing_requests(server: ServerProcess, live: Live) -> None:
    files = names(live)
    paths = [f"/hls/{live.sid}/{files[k]}" for k in ("part", "segment", "init", "part")]
    singles = [exchange(server, request("GET", p))[0][1] for p in paths]
    # Pipelined in one write, one of them through ASGI: every answer in its place.
    raw = b"".join(request("GET", p, VIA_ASGI if i == 1 else b"") for i, p in enumerate(paths))
    assert [body for _, body in exchange(server, raw, count=len(paths))] == singles
    # HTTP/1.0 and Connection: close get `connection: close` and a closed connection.
    for closing in (
        f"GET {paths[0]} HTTP/1.0\r\n\r\n".encode(),
        request("GET", paths[0], b"Connection: close\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", server.ports["stream"]), timeout=20) as sock:
            sock.sendall(closing)
            data = b""
            while chunk := sock.recv(1 << 16):  # ends because the server closes
                data += chunk
        top, _, body = data.partition(b"\r\n\r\n")
        assert top.endswith(b"\r\nconnection: close") and body == singles[0]


def test_tricky_paths_get_the_same_answer_as_before(server: ServerProcess, live: Live) -> None:
    sid = live.sid
    # The protocol answers none of these itself (not exactly /hls/{id}/{known name}, or escaped).
    # Litestar's router folds repeated and trailing slashes before its disk route (200, as before).
    tricks = {
        f"/hls/{sid}/../{sid}/stream.m3u8": 404,
        f"/hls/{sid}/%2e%2e/stream.m3u8": 404,
        f"/hls/{sid}/%2e%2e": 404,
        f"/hls/{sid}/%2e%2e%2f%2e%2e%2fconfig.toml": 404,
        f"/hls//{sid}/stream.m3u8": 200,
        f"/hls/{sid}//stream.m3u8": 200,
        f"/hls/{sid}/stream.m3u8/": 200,
        f"/hls/{sid}/seg_1_{'9' * 40}.m4s": 404,
        f"/hls/{sid}/part_1_0.m4s.bak": 404,
        f"/hls/{'x' * 300}/stream.m3u8": 404,
        f"/hls/{sid}/init_0.mp4": 404,
    }
    for path, expected in tricks.items():
        [(direct_head, direct_body)] = exchange(server, request("GET", path))
        [(asgi_head, asgi_body)] = exchange(server, request("GET", path, VIA_ASGI))
        status = direct_head.split(b"\r\n")[0]
        assert status == asgi_head.split(b"\r\n")[0], path
        assert status.split()[1] == str(expected).encode(), (path, status)
        if expected == 404:
            assert direct_body == asgi_body and b'"code": 404' in direct_body.replace(b'":404', b'": 404'), (
                path
            )


def test_direct_answers_count_viewers_requests_and_log_lines(server: ServerProcess, live: Live) -> None:
    segment = names(live)["segment"]
    path = f"/hls/{live.sid}/{segment}"

    def counted() -> float:
        text = server.main.get("/metrics").text
        pattern = r"(?m)^streamplat_http_requests_total\{(.*)\} (\S+)$"  # route labels have braces
        return sum(
            float(value)
            for labels, value in re.findall(pattern, text)
            if 'route="/hls/{stream_id:str}/{segment:str}"' in labels
            and 'method="GET"' in labels
            and 'status="200"' in labels
        )

    before = counted()
    agents = [f"direct-viewer-{i}".encode() for i in range(3)]
    raw = b"".join(
        request("GET", path, request_id=b"direct-count-" + a[-1:]).replace(b"direct-test", a) for a in agents
    )
    assert len(exchange(server, raw, count=3)) == 3
    assert counted() - before == 3
    # Every user agent from this address is a viewer of its own (viewer_key: address + agent).
    detail = server.main.get(f"/api/streams/{live.sid}", headers={"Authorization": f"Bearer {live.token}"})
    assert detail.json()["viewer_count"] >= 3
    # logging.hls_access_log is on here: each direct answer has its line, with its request id.
    logs = server.logs()
    for i in range(3):
        assert re.search(rf"GET {re.escape(path)} 200 .*request_id=direct-count-{i}", logs), i


def test_blocking_reloads_answered_at_once_or_held(server: ServerProcess, live: Live) -> None:
    text = live.playlist()
    msn, index = last_part(text)
    playlist = f"/hls/{live.sid}/stream.m3u8"
    # Already satisfied (the last listed part): answered at once, the same playlist as ASGI's.
    done = f"{playlist}?_HLS_msn={msn}&_HLS_part={index}"
    [(direct_head, direct_body)] = exchange(server, request("GET", done))
    [(asgi_head, _)] = exchange(server, request("GET", done, VIA_ASGI))
    assert direct_head.startswith(b"HTTP/1.1 200 OK")
    assert without(direct_head, b"date", b"content-length") == without(asgi_head, b"date", b"content-length")
    assert last_part(direct_body.decode()) >= (msn, index)
    # The next part, not there yet: left to ASGI, which holds it until the packager cuts it.
    [(head, body)] = exchange(server, request("GET", f"{playlist}?_HLS_msn={msn}&_HLS_part={index + 1}"))
    assert head.startswith(b"HTTP/1.1 200 OK") and last_part(body.decode()) > (msn, index)
    # A bad directive is still ASGI's 400 with the spec's body.
    [(head, body)] = exchange(server, request("GET", f"{playlist}?_HLS_msn=abc"))
    assert head.startswith(b"HTTP/1.1 400 ") and b"non-negative integer" in body
