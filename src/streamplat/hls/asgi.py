"""The fast path for `/hls/{id}/...` of live streams, in front of the Stream App (design §3.7).

For a stream in the `LiveStore`, playlists, parts, segments and inits are answered from memory
with two ASGI sends of precomputed headers: no Litestar request, no file read, no thread hop,
no database query. Everything else (other paths, streams not live, segments that left memory,
methods other than GET/HEAD) falls through to the Litestar app, which serves the files on disk.

Names are parsed with fixed patterns into integers and looked up in dicts; they are never
joined into a path, so `..`, `%2f` or absolute names cannot leave the stream's folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from streamplat.hls.playlist import DirectiveError, check_directives, have, parse_directives
from streamplat.hls.store import Blob, LiveStore, LiveStream

__all__ = ["HlsFastPath"]

_PART = re.compile(r"part_([1-9]\d{0,8})_(\d{1,9})\.m4s")
_SEGMENT = re.compile(r"seg_([1-9]\d{0,8})_(\d{1,12})\.m4s")
_INIT = re.compile(r"init_([1-9]\d{0,8})\.mp4")
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLAYLIST = "stream.m3u8"
PLAYLIST_ROUTE = "/hls/{stream_id:str}/stream.m3u8"
FILE_ROUTE = "/hls/{stream_id:str}/{segment:str}"
FIRST_SEGMENT_WAIT = 6.0  # a live run's first segment closes ~1-2 s after its init


def _phrase(status: int) -> str:
    return {400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]


def _error(status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> Blob:
    body = json.dumps({"error": _phrase(status), "message": message, "code": status}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    return Blob(body, headers)


class HlsFastPath:
    """ASGI wrapper: live HLS from memory, everything else to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        store: LiveStore,
        *,
        touch: Callable[[str, str | None, str | None], None] | None = None,
        cors_origins: list[str] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.touch = touch
        origins = cors_origins or []
        self._any_origin = "*" in origins
        self._origins = {o.encode() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) != "http":
            await self.app(scope, receive, send)
            return
        raw: dict[str, Any] = scope  # type: ignore[assignment]
        path: str = raw["path"]
        method: str = raw["method"]
        if not path.startswith("/hls/") or method not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        pieces = path[5:].split("/")
        stream = self.store.get(pieces[0]) if len(pieces) == 2 and _STREAM_ID.fullmatch(pieces[0]) else None
        if stream is None:
            await self.app(scope, receive, send)
            return
        name = pieces[1]
        # The route names the metrics use for the same resources served from disk.
        raw["path_template"] = PLAYLIST_ROUTE if name == PLAYLIST else FILE_ROUTE
        answer: tuple[int, Blob] | None
        if name == PLAYLIST:
            answer = await self._playlist(stream, raw.get("query_string", b"").decode("latin-1"))
            if answer[0] == 200:
                self._touch(stream.stream_id, raw)
        elif match := _PART.fullmatch(name):
            answer = await self._part(stream, int(match.group(1)), int(match.group(2)))
            if answer[0] == 200:
                self._touch(stream.stream_id, raw)
        elif match := _SEGMENT.fullmatch(name):
            segment = stream.segment_blobs.get((int(match.group(1)), int(match.group(2))))
            if segment is None:
                # Older than the memory window (or unknown): the disk route decides.
                await self.app(scope, receive, send)
                return
            answer = (200, segment)
            self._touch(stream.stream_id, raw)
        elif match := _INIT.fullmatch(name):
            init = stream.init_blobs.get(int(match.group(1)))
            if init is None:
                await self.app(scope, receive, send)
                return
            answer = (200, init)
        else:
            await self.app(scope, receive, send)
            return
        status, blob = answer
        headers = blob.headers
        extra = self._cors(raw)
        if extra:
            headers = [*headers, *extra]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
        body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": b"" if method == "HEAD" else blob.body,
            "more_body": False,
        }
        await send(start)
        await send(body)

    def _touch(self, stream_id: str, raw: dict[str, Any]) -> None:
        if self.touch is None:
            return
        client = raw.get("client")
        agent = None
        for key, value in raw["headers"]:
            if key == b"user-agent":
                agent = value.decode("latin-1")
                break
        self.touch(stream_id, client[0] if client else None, agent)

    def _cors(self, raw: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        if not self._origins:
            return []
        origin = None
        for key, value in raw["headers"]:
            if key == b"origin":
                origin = value
                break
        if origin is None:
            return []
        if self._any_origin:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self._origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return []

    async def _playlist(self, stream: LiveStream, query: str) -> tuple[int, Blob]:
        try:
            directives = parse_directives(query) if "_HLS_" in query else None
        except DirectiveError as exc:
            return 400, _error(400, str(exc))
        # No complete segment yet: an empty playlist would be fatal in hls.js
        # (LEVEL_EMPTY_ERROR). While a run is live its first segment is a second or so away:
        # hold; with no publisher there is nothing to wait for (as before: 404).
        if stream.playlist is None and (
            stream.live_run is None
            or not await stream.wait(lambda: stream.playlist is not None, FIRST_SEGMENT_WAIT)
        ):
            return 404, _error(404, "Playlist not available yet: the stream is waiting for its publisher")
        if directives is None or directives.msn is None or stream.ended:
            assert stream.playlist is not None
            return 200, stream.playlist
        cutter = stream.cutter
        td = cutter.target_duration or 1
        try:
            check_directives(
                stream.window(), cutter.open, directives, target_duration=td, part_target=cutter.part_target
            )
        except DirectiveError as exc:
            return 400, _error(400, str(exc))
        msn, part = directives.msn, directives.part
        ready = await stream.wait(
            lambda: stream.ended or have(stream.window(), stream.cutter.open, msn, part), 3.0 * td
        )
        if not ready:
            retry = [(b"retry-after", b"1")]
            return 503, _error(503, f"segment {msn} part {part} is not available yet", retry)
        assert stream.playlist is not None
        return 200, stream.playlist

    async def _part(self, stream: LiveStream, run: int, number: int) -> tuple[int, Blob]:
        blob = stream.part(run, number)
        if blob is None and stream.is_hinted(run, number):
            # The PRELOAD-HINT: hold until the part exists (bytes only once it is whole) or the
            # run ends (then 404, which RFC 8216bis 6.2.6 allows for a dropped hint).
            td = stream.cutter.target_duration or 1
            await stream.wait(
                lambda: stream.part(run, number) is not None or not stream.is_hinted(run, number), 3.0 * td
            )
            blob = stream.part(run, number)
        if blob is None:
            return 404, _error(404, "Part not found")
        return 200, blob
