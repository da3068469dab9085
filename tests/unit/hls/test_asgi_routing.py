"""/hls/ requests for a stream another node ingests: X-Accel-Redirect behind nginx, 307 without.

The fast path and the owner router behind it, composed as app.py does, are driven through their
ASGI interface; the owner lookup is a dict (the node registry's `stream_owner` is synchronous and
in memory, tested with the registry).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from streamplat.hls.asgi import AllowOrigin, HlsFastPath
from streamplat.hls.owners import OwnerRouter
from streamplat.hls.store import LiveStore

STREAM = "s_abc-123"


@dataclass(frozen=True)
class Owner:
    node_id: str
    stream_url: str
    public_host: str


def call(
    owners: dict[str, Owner],
    path: str,
    *,
    query: bytes = b"",
    edge: bytes | None = None,
    method: str = "GET",
    origin: bytes | None = None,
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """(status, headers, body) of one request; status None when it fell through to the app."""
    fell_through: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fell_through.append(scope["path"])

    origins = ["https://site.example"]
    fast = HlsFastPath(OwnerRouter(app, owners.get, cors_origins=origins), LiveStore(), cors_origins=origins)
    headers = [(b"host", b"node-b")]
    if edge is not None:
        headers.append((b"x-streamplat-edge", edge))
    if origin is not None:
        headers.append((b"origin", origin))
    scope = {"type": "http", "path": path, "method": method, "query_string": query, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(fast(scope, receive, send))  # type: ignore[arg-type]
    if fell_through:
        assert not sent
        return None, {}, b""
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


OWNERS = {STREAM: Owner("node-a", "http://10.0.0.5:9090", "a.example.com")}


@pytest.mark.parametrize(
    "name", ["stream.m3u8", "part_1_7.m4s", "seg_2_31.m4s", "init_1.mp4"], ids=lambda n: n.split("_")[0]
)
def test_behind_nginx_the_owner_is_named_in_x_accel_redirect(name: str) -> None:
    status, headers, body = call(OWNERS, f"/hls/{STREAM}/{name}", edge=b"nginx")
    assert status == 307 and body == b""
    assert headers[b"x-accel-redirect"] == f"/_streamplat_node/10.0.0.5:9090/hls/{STREAM}/{name}".encode()
    # nginx copies some headers of this answer onto the final one: none that could clash.
    assert set(headers) == {b"x-accel-redirect", b"content-length"}


def test_blocking_playlist_requests_keep_their_query() -> None:
    query = b"_HLS_msn=12&_HLS_part=3"
    _, headers, _ = call(OWNERS, f"/hls/{STREAM}/stream.m3u8", query=query, edge=b"nginx")
    assert headers[b"x-accel-redirect"].endswith(b"/stream.m3u8?_HLS_msn=12&_HLS_part=3")
    status, headers, _ = call(OWNERS, f"/hls/{STREAM}/stream.m3u8", query=query)
    assert status == 307
    assert headers[b"location"] == f"http://a.example.com:9090/hls/{STREAM}/stream.m3u8?".encode() + query


def test_without_nginx_the_player_is_sent_to_the_owners_public_url() -> None:
    status, headers, body = call(OWNERS, f"/hls/{STREAM}/seg_2_31.m4s", origin=b"https://site.example")
    assert status == 307 and body == b""
    assert headers[b"location"] == f"http://a.example.com:9090/hls/{STREAM}/seg_2_31.m4s".encode()
    assert headers[b"cache-control"] == b"no-store"
    # A cross-origin player follows the redirect only if the redirect itself passes CORS.
    assert headers[b"access-control-allow-origin"] == b"https://site.example"
    assert b"x-accel-redirect" not in headers


def test_a_forged_edge_header_sent_directly_only_names_the_registered_node() -> None:
    status, headers, _ = call(OWNERS, f"/hls/{STREAM}/stream.m3u8", edge=b"nginx")
    assert status == 307 and b"location" not in headers
    assert headers[b"x-accel-redirect"].startswith(b"/_streamplat_node/10.0.0.5:9090/")


def test_on_nginxs_hop_to_the_owner_there_is_no_second_redirect() -> None:
    # The registry of the node nginx reached may disagree for a moment: it must not loop.
    assert call(OWNERS, f"/hls/{STREAM}/stream.m3u8", edge=b"owner")[0] is None


@pytest.mark.parametrize(
    "path",
    [
        "/hls/other-stream/stream.m3u8",  # nobody else ingests it: the app answers (disk or 404)
        f"/hls/{STREAM}/../../etc/passwd",
        f"/hls/{STREAM}/secret.txt",
        f"/hls/{STREAM}/seg_1_1.m4s/x",
        f"/hls/{STREAM}%2f..%2f/stream.m3u8",
        "/hls/" + "a" * 65 + "/stream.m3u8",
    ],
)
def test_only_known_media_names_of_valid_ids_are_redirected(path: str) -> None:
    owners = {**OWNERS, "a" * 65: OWNERS[STREAM], f"{STREAM}%2f..%2f": OWNERS[STREAM]}
    assert call(owners, path, edge=b"nginx")[0] is None


def test_a_query_that_could_break_the_header_is_refused() -> None:
    status, headers, body = call(
        OWNERS, f"/hls/{STREAM}/stream.m3u8", query=b"a=1\r\nX-Evil: 1", edge=b"nginx"
    )
    assert status == 400 and b"x-accel-redirect" not in headers
    assert b"query" in body


@pytest.mark.parametrize(
    "url",
    [
        "http://node-a.internal:9090",  # a name: nginx would need a resolver
        "http://10.0.0.5",  # no port
        "http://10.0.0.5:9090/prefix",
        "http://user:pw@10.0.0.5:9090",
        "https://10.0.0.5:9090",  # nginx's hop is plain HTTP
        "not a url",
    ],
)
def test_an_owner_address_nginx_cannot_use_is_a_503_not_a_redirect(url: str) -> None:
    owners = {STREAM: Owner("node-a", url, "a.example.com")}
    status, headers, body = call(owners, f"/hls/{STREAM}/part_1_1.m4s", edge=b"nginx")
    assert status == 503 and b"x-accel-redirect" not in headers
    assert b"no address viewers can be sent to" in body


def test_ipv6_owners_are_bracketed() -> None:
    owners = {STREAM: Owner("node-a", "http://[fd00::5]:9090", "fd00::5")}
    _, headers, _ = call(owners, f"/hls/{STREAM}/init_1.mp4", edge=b"nginx")
    assert (
        headers[b"x-accel-redirect"] == f"/_streamplat_node/[fd00::5]:9090/hls/{STREAM}/init_1.mp4".encode()
    )
    _, headers, _ = call(owners, f"/hls/{STREAM}/init_1.mp4")
    assert headers[b"location"] == f"http://[fd00::5]:9090/hls/{STREAM}/init_1.mp4".encode()


def test_head_requests_are_redirected_too() -> None:
    status, headers, body = call(OWNERS, f"/hls/{STREAM}/seg_2_31.m4s", method="HEAD")
    assert status == 307 and body == b"" and b"location" in headers


@pytest.mark.parametrize(
    ("origins", "origin", "expected"),
    [
        (["https://site.example"], b"https://site.example", [b"https://site.example", b"Origin"]),
        (["https://site.example"], b"https://other.example", []),
        (["https://site.example"], None, []),
        (["*"], b"https://any.example", [b"*"]),
        (["*"], None, []),
        ([], b"https://site.example", []),
    ],
    ids=["listed", "not-listed", "no-origin", "any", "any-no-origin", "cors-off"],
)
def test_live_answers_and_redirects_get_the_cors_headers_litestar_gives_the_rest(
    origins: list[str], origin: bytes | None, expected: list[bytes]
) -> None:
    # Litestar's CORS middleware (the disk routes): "*" without Vary, else the origin + Vary.
    headers = [(b"host", b"x")] + ([(b"origin", origin)] if origin is not None else [])
    names = [b"access-control-allow-origin", b"vary"][: len(expected)]
    assert AllowOrigin(origins)(headers) == list(zip(names, expected, strict=True))
