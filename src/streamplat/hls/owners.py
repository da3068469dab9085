"""Requests for live streams another node ingests, sent there (issue 12; deploy/nginx/streamplat.conf).

`OwnerRouter` sits behind `HlsFastPath` (hls/asgi.py), which answers what this node's live store
holds; what it passes on for `/hls/{id}/{name}` of a stream the node registry says another alive
node ingests (`stream_owner`, in memory) is sent there without this process carrying its bytes:
- behind our nginx (the template sets `X-Streamplat-Edge: nginx` on every request): an empty
  answer with `X-Accel-Redirect: /_streamplat_node/<ip>:<port>/hls/<id>/<name>`, which nginx
  follows internally to the owner's Stream App (and caches like any other part or segment);
- on that hop nginx says `X-Streamplat-Edge: owner`: never redirect again (serve or 404), so
  two registries disagreeing for a moment cannot loop;
- without nginx: 307 to the owner's public Stream App URL (hls.js follows it and resolves the
  playlist's relative URIs against it).
The address comes from the registry only: the request supplies just a stream id and a file
name, both matched by the fast path's fixed patterns first. A forged header gets a client
nothing but that address in a response header.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from litestar.types import ASGIApp, Receive, Scope, Send

from streamplat.hls.asgi import (
    _INIT,
    _PART,
    _SEGMENT,
    _STREAM_ID,
    PLAYLIST,
    AllowOrigin,
    _error,
    route_of,
    send_blob,
)
from streamplat.hls.store import Blob
from streamplat.http import header_value

__all__ = ["EDGE_HEADER", "OwnerRouter", "RemoteOwner"]

log = logging.getLogger(__name__)

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


class OwnerRouter:
    """ASGI wrapper: /hls/ requests for another node's live stream go there; the rest to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        owner: Callable[[str], RemoteOwner | None],
        *,
        cors_origins: list[str] | None = None,
    ) -> None:
        self.app = app
        self.owner = owner
        self._cors = AllowOrigin(cors_origins)
        self._unusable: set[str] = set()  # stream URLs already logged as not routable by nginx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: dict[str, Any] = scope  # type: ignore[assignment]
        answer = None
        if (
            str(scope["type"]) == "http"
            and raw["path"].startswith("/hls/")
            and raw["method"] in ("GET", "HEAD")
        ):
            pieces = raw["path"][5:].split("/")
            if len(pieces) == 2 and _STREAM_ID.fullmatch(pieces[0]) and _is_media_name(pieces[1]):
                answer = self._elsewhere(raw, pieces[0], pieces[1])
        if answer is None:
            await self.app(scope, receive, send)
            return
        # The route names the metrics use for the same resources answered here.
        raw["path_template"] = route_of(pieces[1])
        status, blob = answer
        # CORS on the redirect itself: a cross-origin player follows it only if it passes.
        await send_blob(send, status, blob, self._cors(raw["headers"]), head=raw["method"] == "HEAD")

    def _elsewhere(self, raw: dict[str, Any], stream_id: str, name: str) -> tuple[int, Blob] | None:
        """The answer sending a request for another node's live stream there, or None (not one)."""
        edge = header_value(raw["headers"], EDGE_HEADER)
        if edge == b"owner":
            return None  # nginx's hop to the owner: whatever this node has, or 404; no loops
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
            return 503, _error(503, "The node ingesting this stream has no address viewers can be sent to")
        scheme, host, port = where
        if edge == b"nginx":
            # Only this header (nginx carries some headers of this answer, Cache-Control and
            # Content-Type among them, over to the final response), and 307 as in the direct
            # answer (nginx follows the header whatever the status), so metrics count redirects.
            target = f"{NODE_PREFIX}{host}:{port}{tail}".encode()
            return 307, Blob(b"", [(b"x-accel-redirect", target), (b"content-length", b"0")])
        public = owner.public_host
        if ":" in public and not public.startswith("["):
            public = f"[{public}]"
        location = f"{scheme}://{public}:{port}{tail}".encode()
        return 307, Blob(
            b"", [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store")]
        )


def _node_address(url: str) -> tuple[str, str, int] | None:
    """(scheme, ip as nginx writes it, port) of a registry stream URL; None unless http(s)://<ip>:<port>."""
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
