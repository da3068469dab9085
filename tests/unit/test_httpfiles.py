"""Byte ranges and conditional requests, over real HTTP to a real uvicorn."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from litestar import Litestar, Request, Response, route

from streamplat.httpfiles import file_response, parse_range

SIZE = 1024 * 1024


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=100-", 1000, (100, 999)),
        ("bytes=-500", 1000, (500, 999)),
        ("bytes=-5000", 1000, (0, 999)),  # suffix longer than the file: all of it
        ("bytes=990-5000", 1000, (990, 999)),  # end clamped to the last byte
        ("bytes=999-999", 1000, (999, 999)),
        ("BYTES = 5 - 9", 1000, (5, 9)),  # unit is case-insensitive, whitespace tolerated
        ("bytes=1000-", 1000, "unsatisfiable"),
        ("bytes=2000-3000", 1000, "unsatisfiable"),
        ("bytes=-0", 1000, "unsatisfiable"),
        ("bytes=0-", 0, "unsatisfiable"),
        ("bytes=-10", 0, None),  # nothing to slice: serve the empty file
        ("bytes=0-99,200-299", 1000, None),  # multiple ranges: whole file
        ("bytes=99-0", 1000, None),  # last < first is invalid
        ("bytes=-", 1000, None),
        ("bytes=a-b", 1000, None),
        ("bytes=\u00b9-", 1000, None),  # a Unicode digit is not a digit here
        ("items=0-9", 1000, None),
        ("0-9", 1000, None),
        ("", 1000, None),
    ],
)
def test_parse_range(
    header: str, size: int, expected: tuple[int, int] | Literal["unsatisfiable"] | None
) -> None:
    assert parse_range(header, size) == expected


@pytest.fixture(name="payload")
def fixture_payload(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "recording.mp4"
    path.write_bytes(data)
    return path, data


@pytest.fixture(name="client")
def fixture_client(payload: tuple[Path, bytes]) -> Iterator[httpx.Client]:
    path, _ = payload

    @route("/video", http_method=["GET", "HEAD"])
    async def video(request: Request[Any, Any, Any]) -> Response[Any]:
        return file_response(request, path, "video/mp4")

    @route("/download", http_method=["GET", "HEAD"])
    async def download(request: Request[Any, Any, Any]) -> Response[Any]:
        return file_response(request, path, "video/mp4", filename='Ünïcode "live".mp4')

    app = Litestar(route_handlers=[video, download])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_full_get_returns_whole_file(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    response = client.get("/video")
    assert response.status_code == 200
    assert response.content == payload[1]
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "video/mp4"
    assert "content-range" not in response.headers
    assert "last-modified" in response.headers


def test_range_returns_exact_bytes(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    response = client.get("/video", headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == payload[1][100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{SIZE}"
    assert response.headers["content-length"] == "100"
    assert response.headers["accept-ranges"] == "bytes"


def test_suffix_range_returns_tail(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    response = client.get("/video", headers={"Range": "bytes=-500"})
    assert response.status_code == 206
    assert response.content == payload[1][-500:]
    assert response.headers["content-range"] == f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"


def test_open_ended_range_runs_to_end(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    response = client.get("/video", headers={"Range": "bytes=1000000-"})
    assert response.status_code == 206
    assert response.content == payload[1][1000000:]
    assert response.headers["content-range"] == f"bytes 1000000-{SIZE - 1}/{SIZE}"
    assert response.headers["content-length"] == str(SIZE - 1000000)


def test_range_past_end_is_416(client: httpx.Client) -> None:
    response = client.get("/video", headers={"Range": "bytes=2000000-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    body = response.json()
    assert body["error"] == "Range Not Satisfiable"
    assert body["code"] == 416
    assert body["message"]


def test_multiple_ranges_get_whole_file(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    response = client.get("/video", headers={"Range": "bytes=0-9,20-29"})
    assert response.status_code == 200
    assert response.content == payload[1]


def test_head_has_headers_and_no_body(client: httpx.Client) -> None:
    response = client.head("/video")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert "etag" in response.headers
    assert response.content == b""

    ranged = client.head("/video", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["content-length"] == "10"
    assert ranged.content == b""


def test_if_none_match_gives_304(client: httpx.Client) -> None:
    etag = client.head("/video").headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    response = client.get("/video", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    # Weak comparison: a weak form of the same tag also matches.
    assert client.get("/video", headers={"If-None-Match": f'"nope", W/{etag}'}).status_code == 304
    assert client.get("/video", headers={"If-None-Match": '"nope"'}).status_code == 200


def test_if_modified_since_gives_304(client: httpx.Client) -> None:
    last_modified = client.head("/video").headers["last-modified"]
    assert client.get("/video", headers={"If-Modified-Since": last_modified}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert client.get("/video", headers={"If-Modified-Since": old}).status_code == 200
    assert client.get("/video", headers={"If-Modified-Since": "garbage"}).status_code == 200


def test_changed_file_gets_new_etag(client: httpx.Client, payload: tuple[Path, bytes]) -> None:
    path, _ = payload
    etag = client.head("/video").headers["etag"]
    path.write_bytes(b"replaced")
    response = client.get("/video", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.content == b"replaced"


def test_if_range_with_stale_validator_gives_full_file(
    client: httpx.Client, payload: tuple[Path, bytes]
) -> None:
    head = client.head("/video").headers
    current = client.get("/video", headers={"Range": "bytes=0-9", "If-Range": head["etag"]})
    assert current.status_code == 206
    assert current.content == payload[1][:10]
    by_date = client.get("/video", headers={"Range": "bytes=0-9", "If-Range": head["last-modified"]})
    assert by_date.status_code == 206

    stale = client.get("/video", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == payload[1]
    weak = client.get("/video", headers={"Range": "bytes=0-9", "If-Range": f"W/{head['etag']}"})
    assert weak.status_code == 200
    old_date = client.get(
        "/video", headers={"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert old_date.status_code == 200


def test_filename_sets_content_disposition(client: httpx.Client) -> None:
    disposition = client.head("/download").headers["content-disposition"]
    assert disposition.startswith("attachment; ")
    assert "filename*=UTF-8''%C3%9Cn%C3%AFcode%20%22live%22.mp4" in disposition
