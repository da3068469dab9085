"""The fast path for `/hls/{id}/...` of live streams, in front of the Stream App (design §3.7).

For a stream in the `LiveStore`, playlists, parts, segments and inits are answered from memory
with two ASGI sends of precomputed headers: no Litestar request, no file read, no thread hop,
no database query. Everything else (other paths, streams not live, segments that left memory,
methods other than GET/HEAD) falls through to the Litestar app, which serves the files on disk.

Names are parsed with fixed patterns into integers and looked up in dicts; they are never
joined into a path, so `..`, `%2f` or absolute names cannot leave the stream's folder.

A live stream ingested by another node (`owner`, the node registry's `stream_owner`) is sent
there without this process carrying its bytes:
- behind our nginx (deploy/nginx/streamplat.conf sets `X-Streamplat-Edge: nginx`): an empty
  answer with `X-Accel-Redirect: /_streamplat_node/<ip>:<port>/hls/<id>/<name>`, which nginx
  follows internally to the owner's Stream App (and caches like any other part or segment);
- on that hop nginx says `X-Streamplat-Edge: owner`: never redirect again (serve or 404);
- without nginx: 307 to the owner's public Stream App URL (hls.js follows it and resolves the
  playlist's relative URIs against it).
The address comes from the registry only: the request supplies just a stream id and a file
name, both matched by fixed patterns first. A forged header gets a client nothing but that
address in a response header.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from streamplat.hls.playlist import DirectiveError, check_directives, have, parse_directives
from streamplat.hls.store import Blob, LiveStore, LiveStream

__all__ = ["EDGE_HEADER", "HlsFastPath", "RemoteOwner"]

log = logging.getLogger(__name__)

_PART = re.compile(r"part_([1-9]\d{0,8})_(\d{1,9})\.m4s")
_SEGMENT = re.compile(r"seg_([1-9]\d{0,8})_(\d{1,12})\.m4s")
_INIT = re.compile(r"init_([1-9]\d{0,8})\.mp4")
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLAYLIST = "stream.m3u8"
PLAYLIST_ROUTE = "/hls/{stream_id:str}/stream.m3u8"
FILE_ROUTE = "/hls/{stream_id:str}/{segment:str}"
FIRST_SEGMENT_WAIT = 6.0  # a live run's first segment closes ~1-2 s after its init
EDGE_HEADER = b"x-streamplat-edge"  # set by deploy/nginx/streamplat.conf: "nginx" or "owner"
NODE_PREFIX = "/_streamplat_node/"  # nginx's internal location proxying to an owner node
_QUERY = re.compile(r"[A-Za-z0-9_=&.%-]{0,200}")  # what an LL-HLS playlist request may carry


class RemoteOwner(Protocol):
    """The node ingesting a stream, as the node registry knows it (streamplat.nodes.NodeInfo)."""

    @property
    def stream_url(self) -> str: ...  # its Stream App as nodes and nginx reach it: http://ip:port

    @property
    def public_host(self) -> str: ...  # its host as clients reach it


def _is_media_name(name: str) -> bool:
    return name == PLAYLIST or any(p.fullmatch(name) for p in (_PART, _SEGMENT, _INIT))


def _phrase(status: int) -> str:
    return {400: "Bad Request", 404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable"}[status]


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
        owner: Callable[[str], RemoteOwner | None] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.touch = touch
        self.owner = owner
        self._unusable: set[str] = set()  # stream URLs already logged as not routable by nginx
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
        valid = len(pieces) == 2 and _STREAM_ID.fullmatch(pieces[0]) is not None
        stream = self.store.get(pieces[0]) if valid else None
        if stream is None:
            if valid and self.owner is not None and _is_media_name(pieces[1]):
                redirect = self._elsewhere(raw, pieces[0], pieces[1])
                if redirect is not None:
                    raw["path_template"] = PLAYLIST_ROUTE if pieces[1] == PLAYLIST else FILE_ROUTE
                    await self._send(raw, send, method, *redirect)
                    return
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
        await self._send(raw, send, method, *answer)

    async def _send(self, raw: dict[str, Any], send: Send, method: str, status: int, blob: Blob) -> None:
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

    def _elsewhere(self, raw: dict[str, Any], stream_id: str, name: str) -> tuple[int, Blob] | None:
        """The answer sending a request for another node's live stream there, or None (not one)."""
        edge = _header(raw, EDGE_HEADER)
        if edge == b"owner":
            return None  # nginx's hop to the owner: whatever this node has, or 404; no loops
        assert self.owner is not None
        owner = self.owner(stream_id)
        if owner is None:
            return None
        query = ""
        if name == PLAYLIST:
            query = raw.get("query_string", b"").decode("latin-1")
            if not _QUERY.fullmatch(query):
                return 400, _error(400, "Unexpected characters in the playlist query")
        tail = f"/hls/{stream_id}/{name}" + (f"?{query}" if query else "")
        where = _node_address(owner.stream_url)
        if where is None or (edge == b"nginx" and where[0] != "http"):  # nginx's hop is plain HTTP
            if owner.stream_url not in self._unusable:
                self._unusable.add(owner.stream_url)
                log.warning(
                    "stream=%s is ingested at %r: cannot send viewers there "
                    "(cluster.internal_stream_url must be http://<ip>:<port>)",
                    stream_id,
                    owner.stream_url,
                    extra={"stream_id": stream_id},
                )
            return 502, _error(502, "The node ingesting this stream has no usable address")
        scheme, host, port = where
        if edge == b"nginx":
            # Only this header: nginx passes some headers of this answer (Cache-Control,
            # Content-Type) on to the final response.
            # 307 like the direct answer (nginx follows the header whatever the status), so the
            # metrics count these as redirects.
            target = f"{NODE_PREFIX}{host}:{port}{tail}".encode()
            return 307, Blob(b"", [(b"x-accel-redirect", target), (b"content-length", b"0")])
        public = owner.public_host
        if ":" in public and not public.startswith("["):
            public = f"[{public}]"
        location = f"{scheme}://{public}:{port}{tail}".encode()
        return 307, Blob(
            b"", [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store")]
        )

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


def _header(raw: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in raw["headers"]:
        if key == name:
            return bytes(value)
    return None


def _node_address(url: str) -> tuple[str, str, int] | None:
    """(scheme, ip as nginx writes it, port) of a registry stream URL; None unless http://<ip>:<port>."""
    try:
        parts = urlsplit(url)
        port = parts.port
        ip = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return None
    if (
        parts.scheme not in ("http", "https")
        or port is None
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return parts.scheme, host, port
