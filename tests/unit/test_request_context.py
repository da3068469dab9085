"""`RequestContext`: request ids and access log lines, with /hls/ successes left out of the log."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from streamplat.http import RequestContext


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    status = 404 if scope["path"].endswith("missing") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


async def _get(app: RequestContext, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("quiet", [None, "/hls/"])
async def test_hls_successes_are_logged_only_when_asked(
    caplog: pytest.LogCaptureFixture, quiet: str | None
) -> None:
    app = RequestContext(_answer, "stream")
    app.quiet_prefix = quiet
    caplog.set_level(logging.INFO, logger="streamplat.access")
    for path in ("/hls/abc/stream.m3u8", "/hls/abc/missing", "/stream/abc/status"):
        sent = await _get(app, path)
        assert any(k == b"x-request-id" for k, _ in sent[0]["headers"])
    logged = [r.getMessage().split()[1] for r in caplog.records if r.name == "streamplat.access"]
    expected = ["/hls/abc/missing", "/stream/abc/status"]
    assert logged == (expected if quiet else ["/hls/abc/stream.m3u8", *expected])
