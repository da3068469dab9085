"""The fast path for `/hls/{id}/...` of live streams, in front of the Stream App (design §3.7).

For a stream in the `LiveStore`, playlists, parts, segments and inits are answered from memory
with two ASGI sends of precomputed headers: no Litestar request, no file read, no thread hop,
no database query. Everything else (other paths, streams not live, segments that left memory,
methods other than GET/HEAD) falls through to the Litestar app, which serves the files on disk.

Names are parsed with fixed patterns into integers and looked up in dicts; they are never
joined into a path, so `..`, `%2f` or absolute names cannot leave the stream's folder.

What memory answers at once (`HlsFastPath.answer_now`) is, with httptools, written even
earlier, by the Stream App's HTTP protocol through `DirectHls` (protocols.py): no ASGI scope,
task or middleware either, and the same bytes on the wire.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from streamplat.hls.playlist import DirectiveError, check_directives, have, parse_directives
from streamplat.hls.store import Blob, LiveStore, LiveStream
from streamplat.http import RequestContext, header_value, request_id_of
from streamplat.logs import request_id_var

__all__ = ["AllowOrigin", "DirectHls", "HlsFastPath", "send_blob"]

_PART = re.compile(r"part_([1-9]\d{0,8})_(\d{1,9})\.m4s")
_SEGMENT = re.compile(r"seg_([1-9]\d{0,8})_(\d{1,12})\.m4s")
_INIT = re.compile(r"init_([1-9]\d{0,8})\.mp4")
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLAYLIST = "stream.m3u8"
PLAYLIST_ROUTE = "/hls/{stream_id:str}/stream.m3u8"
FILE_ROUTE = "/hls/{stream_id:str}/{segment:str}"
FIRST_SEGMENT_WAIT = 6.0  # a live run's first segment closes ~1-2 s after its init


def route_of(name: str) -> str:
    return PLAYLIST_ROUTE if name == PLAYLIST else FILE_ROUTE


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


class AllowOrigin:
    """CORS headers for an answer written here instead of by Litestar's CORS middleware, the
    same as it writes them: `*` when any origin is allowed, else the request's Origin (if
    allowed) with `Vary: Origin`; nothing for a request without an allowed Origin."""

    def __init__(self, origins: list[str] | None) -> None:
        self._any = "*" in (origins or [])
        self._origins = {o.encode() for o in origins or []}

    def __call__(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if not self._origins:
            return []
        origin = header_value(headers, b"origin")
        if origin is None:
            return []
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self._origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return []


async def send_blob(
    send: Send, status: int, blob: Blob, extra: list[tuple[bytes, bytes]], *, head: bool
) -> None:
    """Answer with `blob` (its headers plus `extra`); the body is left out for a HEAD."""
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*blob.headers, *extra] if extra else blob.headers,
    }
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": b"" if head else blob.body,
        "more_body": False,
    }
    await send(start)
    await send(body)


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
        self._cors = AllowOrigin(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) != "http":
            await self.app(scope, receive, send)
            return
        raw: dict[str, Any] = scope  # type: ignore[assignment]
        path: str = raw["path"]
        method: str = raw["method"]
        found = self._resolve(path) if method in ("GET", "HEAD") else None
        if found is None:
            await self.app(scope, receive, send)
            return
        stream, name = found
        # The route names the metrics use for the same resources served from disk.
        raw["path_template"] = route_of(name)
        query = raw.get("query_string", b"").decode("latin-1")
        headers: list[tuple[bytes, bytes]] = raw["headers"]
        status = 200
        ready = self.ready(stream, name, query)
        if ready is not None:
            blob, viewer = ready
        elif name == PLAYLIST:
            status, blob = await self._playlist(stream, query)
            viewer = status == 200
        elif match := _PART.fullmatch(name):
            status, blob = await self._part(stream, int(match.group(1)), int(match.group(2)))
            viewer = status == 200
        else:
            # A segment or init that left memory, or an unknown name: the disk route decides.
            await self.app(scope, receive, send)
            return
        if viewer:
            self._touch(stream.stream_id, raw.get("client"), headers)
        await send_blob(send, status, blob, self._cors(headers), head=method == "HEAD")

    def answer_now(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None
    ) -> tuple[Blob, str, list[tuple[bytes, bytes]]] | None:
        """The 200 answer to a GET/HEAD of `path` if memory holds it now (no wait, no disk):
        the blob, the route template and the CORS headers to add; the viewer is counted.
        None when the request needs `__call__` (blocking reloads, errors) or the app."""
        found = self._resolve(path)
        if found is None:
            return None
        stream, name = found
        ready = self.ready(stream, name, query.decode("latin-1"))
        if ready is None:
            return None
        blob, viewer = ready
        if viewer:
            self._touch(stream.stream_id, client, headers)
        return blob, route_of(name), self._cors(headers)

    def _resolve(self, path: str) -> tuple[LiveStream, str] | None:
        """The live stream and the file name of `/hls/{id}/{name}`, if that stream is in memory."""
        if not path.startswith("/hls/"):
            return None
        pieces = path[5:].split("/")
        if len(pieces) != 2 or not _STREAM_ID.fullmatch(pieces[0]):
            return None
        stream = self.store.get(pieces[0])
        return None if stream is None else (stream, pieces[1])

    def ready(self, stream: LiveStream, name: str, query: str) -> tuple[Blob, bool] | None:
        """The 200 answer for `name` if memory has it without waiting, and whether it counts a
        viewer (playlists, parts and segments do, inits do not); None otherwise."""
        if name == PLAYLIST:
            playlist = self._playlist_now(stream, query)
            return None if playlist is None else (playlist, True)
        blob: Blob | None = None
        viewer = True
        if match := _PART.fullmatch(name):
            blob = stream.part(int(match.group(1)), int(match.group(2)))
        elif match := _SEGMENT.fullmatch(name):
            blob = stream.segment_blobs.get((int(match.group(1)), int(match.group(2))))
        elif match := _INIT.fullmatch(name):
            blob, viewer = stream.init_blobs.get(int(match.group(1))), False
        return None if blob is None else (blob, viewer)

    @staticmethod
    def _playlist_now(stream: LiveStream, query: str) -> Blob | None:
        """The playlist if it can be answered at once: it exists, and the query has no blocking
        directive or one already satisfied. Bad directives are `_playlist`'s to answer (400)."""
        if stream.playlist is None:
            return None
        if "_HLS_" not in query:
            return stream.playlist
        try:
            directives = parse_directives(query)
        except DirectiveError:
            return None
        if directives.msn is None or stream.ended:
            return stream.playlist
        cutter = stream.cutter
        window = stream.window()
        try:
            check_directives(
                window,
                cutter.open,
                directives,
                target_duration=cutter.target_duration or 1,
                part_target=cutter.part_target,
            )
        except DirectiveError:
            return None
        return stream.playlist if have(window, cutter.open, directives.msn, directives.part) else None

    def _touch(
        self, stream_id: str, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if self.touch is None:
            return
        agent = header_value(headers, b"user-agent")
        self.touch(
            stream_id, client[0] if client else None, None if agent is None else agent.decode("latin-1")
        )

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


class DirectHls:
    """The Stream App's live answers written by the HTTP protocol itself (protocols.py), with
    no ASGI scope, task or middleware: what `HlsFastPath.answer_now` answers at once, plus
    what `RequestContext` adds around every request (X-Request-ID, the access log line when
    `logging.hls_access_log` is on, the request metrics). The header lines come out as uvicorn
    writes them for the ASGI answer, in the same order: blob, CORS, X-Request-ID.
    """

    def __init__(self, fast: HlsFastPath, context: RequestContext) -> None:
        self.fast = fast
        self.context = context

    def __call__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
    ) -> tuple[bytes, bytes] | None:
        """(header lines, body) of the 200 answer to a GET/HEAD, or None to leave it to ASGI."""
        started = time.perf_counter()
        answer = self.fast.answer_now(path, query, headers, client)
        if answer is None:
            return None
        blob, route, cors = answer
        request_id = request_id_of(headers)
        lines = [
            blob.head,
            *(b"%s: %s\r\n" % pair for pair in cors),
            b"x-request-id: %s\r\n" % request_id.encode(),
        ]
        token = request_id_var.set(request_id)
        try:
            self.context.answered(method, path, route, 200, time.perf_counter() - started)
        finally:
            request_id_var.reset(token)
        return b"".join(lines), b"" if method == "HEAD" else blob.body
