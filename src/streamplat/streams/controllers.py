"""Main App stream endpoints (port 8080) and the Stream App (port 9090: status and HLS)."""

from __future__ import annotations

import re
from typing import Annotated, Any, cast

import msgspec
from litestar import Request, Response, Router
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, JSONBody, PathParameter
from litestar.types import ASGIApp, Receive, Scope, Send

from streamplat.auth import (
    AuthService,
    Principal,
    guarded_caller,
    header_bearer_token,
    provide_principal,
    requires_login,
    requires_role,
)
from streamplat.errors import NotFound, responses
from streamplat.http import delete, get, has_header, post, send_json
from streamplat.httpfiles import file_response, file_responses
from streamplat.params import Limit, Offset, StreamIdPath, UserIdFilter
from streamplat.streams.schemas import (
    FORWARDED_HEADER,
    INTERNAL_TOKEN_HEADER,
    IngestStatusOut,
    InternalStop,
    KeyRotated,
    StreamCreate,
    StreamCreated,
    StreamDeleted,
    StreamDetail,
    StreamList,
    StreamStarted,
    StreamStatus,
    StreamStopped,
)
from streamplat.streams.services import StreamService, is_stream_id
from streamplat.streams.viewers import viewer_key
from streamplat.validation import ValidatedBody

Caller = NamedDependency[Principal]
Streams = NamedDependency[StreamService]


def provide_streams(request: Request[Any, Any, Any]) -> StreamService:
    """The stream service (a dependency where it is a handler's only one).

    Handlers that also take the caller (`principal`) call this directly instead: Litestar resolves
    two dependencies of one handler concurrently, in an anyio task group per request, which was
    a quarter of the cost of a cached GET /api/streams/{id} (py-spy; +30 % req/s without it).
    """
    service: StreamService = request.app.state.platform.streams
    return service


class StreamDetailFastPath:
    """ASGI wrapper: `GET /api/streams/{id}` answered before Litestar when it succeeds.

    The most polled API call (players and dashboards refresh a stream's status every few
    seconds). Through Litestar, a cached answer cost four times a bare app's request (py-spy:
    routing, a Request, guard, signature model, Response); here it is the same two service
    calls the route makes (`AuthService.authenticate`, `StreamService.get_stream`), encoded
    with msgspec. Anything else goes to the Litestar route, which answers it as it always did:
    other paths and methods, requests with an `Origin` (CORS), no Bearer token, and every
    failure (bad token, unknown stream, database error: the route repeats the work and gives
    its usual error). Request id, access log and metrics come from `RequestContext` around this.
    """

    PREFIX = "/api/streams/"
    ROUTE = "/api/streams/{stream_id}"  # scope["path_template"], as Litestar would set it

    def __init__(self, app: ASGIApp, streams: StreamService, auth: AuthService) -> None:
        self.app = app
        self.streams = streams
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = cast("dict[str, Any]", scope)
        path: str = raw["path"] if raw["type"] == "http" else ""
        stream_id = path[len(self.PREFIX) :]
        token = header_bearer_token(scope) if path.startswith(self.PREFIX) else None
        if (
            token is None
            or raw["method"] != "GET"
            or not is_stream_id(stream_id)
            or has_header(scope, b"origin")
        ):
            await self.app(scope, receive, send)
            return
        try:
            detail = await self.streams.get_stream(stream_id, await self.auth.authenticate(token))
        except Exception:
            await self.app(scope, receive, send)  # the route gives its own answer to the failure
            return
        raw["path_template"] = self.ROUTE
        await send_json(send, 200, msgspec.json.encode(detail))


# --- Main App ------------------------------------------------------------------------------


@post(
    "/api/streams",
    dto=ValidatedBody[StreamCreate],
    return_dto=None,
    status_code=201,
    guards=[requires_role("streamer", "admin")],
    responses=responses(400, 401, 403, 415, 422),
)
async def create_stream(
    data: JSONBody[StreamCreate], principal: Caller, request: Request[Any, Any, Any]
) -> StreamCreated:
    """Create a stream (streamers and admins)."""
    return await provide_streams(request).create_stream(data, principal)


@get("/api/streams", guards=[requires_login], responses=responses(401, 403, 422))
async def list_streams(
    request: Request[Any, Any, Any],
    status: FromQuery[StreamStatus | None] = None,
    user_id: UserIdFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StreamList:
    """The caller's streams, newest first (admins: everyone's, or one user's with user_id)."""
    return await provide_streams(request).list_streams(
        guarded_caller(request), status=status, user_id=user_id, limit=limit, offset=offset
    )


@get("/api/streams/live", guards=[requires_login], responses=responses(401, 422))
async def list_live_streams(
    request: Request[Any, Any, Any], limit: Limit = 50, offset: Offset = 0
) -> StreamList:
    """Every live stream (waiting or active) of every user, for a viewer's home page."""
    return await provide_streams(request).list_streams(
        guarded_caller(request), status=None, user_id=None, limit=limit, offset=offset, live_only=True
    )


@get("/api/streams/{stream_id:str}", guards=[requires_login], responses=responses(401, 404))
async def get_stream(stream_id: StreamIdPath, request: Request[Any, Any, Any]) -> StreamDetail:
    """One stream; srt_url and stream_key are shown to its owner and admins only."""
    # The read handlers take their caller from the guard (guarded_caller), not the `principal`
    # dependency: resolving it was 9 % of a cached request (py-spy).
    return await provide_streams(request).get_stream(stream_id, guarded_caller(request))


@post(
    "/api/streams/{stream_id:str}/start",
    status_code=200,
    guards=[requires_login],
    responses=responses(401, 403, 404, 409, 503, 507),
)
async def start_stream(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> StreamStarted:
    """Open the stream's SRT listener; point OBS at the returned srt_url."""
    return await provide_streams(request).start_stream(stream_id, principal)


@post(
    "/api/streams/{stream_id:str}/stop",
    status_code=200,
    guards=[requires_login],
    responses=responses(401, 403, 404, 409, 503),
)
async def stop_stream(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> StreamStopped:
    """Stop the stream; its recording is processed in the background."""
    return await provide_streams(request).stop_stream(stream_id, principal)


@post(
    "/api/streams/{stream_id:str}/rotate-key",
    status_code=200,
    guards=[requires_login],
    responses=responses(401, 403, 404, 409),
)
async def rotate_key(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> KeyRotated:
    """Replace the stream's SRT passphrase (not while live)."""
    return await provide_streams(request).rotate_key(stream_id, principal)


@delete(
    "/api/streams/{stream_id:str}",
    status_code=200,
    guards=[requires_login],
    responses=responses(401, 403, 404, 503),
)
async def delete_stream(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> StreamDeleted:
    """Delete the stream (a live one is stopped first); its recording stays."""
    return await provide_streams(request).delete_stream(stream_id, principal)


def main_stream_router() -> Router:
    """Stream routes of the Main App."""
    return Router(
        path="/",
        route_handlers=[
            create_stream,
            list_streams,
            list_live_streams,
            get_stream,
            start_stream,
            stop_stream,
            rotate_key,
            delete_stream,
        ],
        dependencies={
            "principal": Provide(provide_principal),
            "streams": Provide(provide_streams, sync_to_thread=False),
        },
        tags=["streams"],
    )


# --- Stream App ----------------------------------------------------------------------------

# MPEG-TS segments of old recordings; fMP4 segments and inits (docs/design/ll-hls.md §3.9).
SEGMENT_NAME = re.compile(r"segment_\d{1,12}\.ts|seg_[1-9]\d{0,8}_\d{1,12}\.m4s|init_[1-9]\d{0,8}\.mp4")
SegmentPath = Annotated[
    str,
    PathParameter(
        description="a segment's file name: seg_<run>_<msn>.m4s, init_<run>.mp4, part_<run>_<n>.m4s "
        "(live only) or segment_<n>.ts (recordings made before LL-HLS)"
    ),
]
PLAYLIST_HEADERS = {"Cache-Control": "no-cache, no-store"}


@get("/stream/{stream_id:str}/status", responses=responses(404))
async def ingest_status(
    stream_id: StreamIdPath, request: Request[Any, Any, Any], streams: Streams
) -> IngestStatusOut:
    """What the stream's FFmpeg listener is doing right now."""
    if FORWARDED_HEADER not in request.headers and is_stream_id(stream_id):
        # Ingested by another node: only it knows its FFmpeg (answered from here if it is silent).
        remote = await streams.owner_ingest_status(stream_id)
        if remote is not None:
            return remote
    # The public view (as any viewer sees it): this port needs no token, so no key may leak.
    detail = await streams.get_stream(stream_id, Principal(0, "", "viewer"))
    status = detail.status
    ingest = streams.ingest_status(stream_id)
    files = await streams.hls_files_count(stream_id)
    return IngestStatusOut(
        stream_id=stream_id,
        status=status,
        ffmpeg_running=bool(ingest and ingest.ffmpeg_running),
        hls_files_count=files,
        uptime_seconds=detail.duration_seconds if status in ("waiting", "active") else 0,
        publisher_connected=bool(ingest and ingest.publisher_connected),
        viewer_count=detail.viewer_count,
        bitrate_kbps=ingest.bitrate_kbps if ingest else None,
        fps=ingest.fps if ingest else None,
        restarts=ingest.restarts if ingest else 0,
        last_error=ingest.last_error if ingest else None,
        hls=streams.live_hls_info(stream_id),
    )


@post("/internal/streams/{stream_id:str}/stop", status_code=200, include_in_schema=False)
async def internal_stop(
    stream_id: StreamIdPath, data: JSONBody[InternalStop], request: Request[Any, Any, Any], streams: Streams
) -> StreamStopped:
    """Stop a stream this node ingests, for another node (authenticated by the cluster's token)."""
    return await streams.stop_forwarded(stream_id, request.headers.get(INTERNAL_TOKEN_HEADER), data.reason)


def _touch(request: Request[Any, Any, Any], streams: StreamService, stream_id: str) -> None:
    client = request.client.host if request.client else None
    streams.touch_viewer(stream_id, viewer_key(client, request.headers.get("user-agent")))


@get("/hls/{stream_id:str}/stream.m3u8", responses=responses(404), media_type="application/vnd.apple.mpegurl")
async def hls_playlist(
    request: Request[Any, Any, Any], stream_id: StreamIdPath, streams: Streams
) -> Response[bytes]:
    """The live HLS playlist (no token needed; plain hls.js plays it)."""
    if not is_stream_id(stream_id):
        raise NotFound("Stream not found")
    path = streams.hls_dir(stream_id) / "stream.m3u8"
    try:
        body = path.read_bytes()
    except OSError:
        if not streams.hls_dir(stream_id).is_dir():
            raise NotFound("Stream not found") from None
        raise NotFound("Playlist not available yet: the stream is waiting for its publisher") from None
    _touch(request, streams, stream_id)
    return Response(body, media_type="application/vnd.apple.mpegurl", headers=PLAYLIST_HEADERS)


@get(
    "/hls/{stream_id:str}/{segment:str}",
    responses={**responses(400, 404, 416, 503), **file_responses("video/mp4")},
    media_type="video/mp4",
)
async def hls_segment(
    request: Request[Any, Any, Any], stream_id: StreamIdPath, segment: SegmentPath, streams: Streams
) -> Response[bytes]:
    """One segment, part or init of the stream (live ones come from memory, see hls/asgi.py)."""
    if not is_stream_id(stream_id):
        raise NotFound("Stream not found")
    if not SEGMENT_NAME.fullmatch(segment):
        raise NotFound("Segment not found")
    path = streams.hls_dir(stream_id) / segment
    if not path.is_file():
        raise NotFound("Segment not found")
    _touch(request, streams, stream_id)
    response = file_response(request, path, "video/mp2t" if segment.endswith(".ts") else "video/mp4")
    # A segment never changes once it is in the playlist.
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"
    return response


def stream_app_router() -> Router:
    """Routes of the Stream App."""
    return Router(
        path="/",
        route_handlers=[ingest_status, hls_playlist, hls_segment, internal_stop],
        dependencies={"streams": Provide(provide_streams, sync_to_thread=False)},
        tags=["stream-app"],
    )
