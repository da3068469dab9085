"""VOD service endpoints (port 8081)."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, Router, route
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery
from litestar.response import Redirect

from streamplat.auth import Principal, optional_principal, provide_principal, requires_login
from streamplat.errors import NotFound, responses
from streamplat.http import delete, get, post
from streamplat.httpfiles import file_response, file_responses
from streamplat.params import Limit, Offset, StreamIdPath, UserIdFilter
from streamplat.streams import is_stream_id
from streamplat.vod.schemas import (
    RecordingDeleted,
    RecordingList,
    RecordingOut,
    RecordingStatus,
    RetryStarted,
)
from streamplat.vod.services import RecordingService

FILE_HEADERS = {"Cache-Control": "public, max-age=300"}
# A redirect to a presigned URL must not be reused after the URL expires; caches keep it a minute.
REDIRECT_HEADERS = {"Cache-Control": "private, max-age=60"}
REDIRECT_RESPONSE = {
    302: ResponseSpec(
        data_container=None,
        description="Kept in object storage: Location is a presigned URL of the object (Range works there)",
        generate_examples=False,
    )
}
Caller = NamedDependency[Principal]
Recordings = NamedDependency[RecordingService]


def provide_recordings(request: Request[Any, Any, Any]) -> RecordingService:
    """The recording service (a dependency where it is a handler's only one).

    Handlers that also take the caller (`principal`) call this directly instead: Litestar resolves
    two dependencies of one handler concurrently, in an anyio task group per request, which was
    a quarter of the cost of a cached GET /api/streams/{id} (py-spy; +30 % req/s without it).
    """
    service: RecordingService = request.app.state.platform.recordings
    return service


def _checked(stream_id: StreamIdPath) -> str:
    if not is_stream_id(stream_id):
        raise NotFound("Recording not found")
    return stream_id


async def _accept_optional_token(request: Request[Any, Any, Any]) -> None:
    # GETs need no token, as the spec shows; one that is sent must still be valid.
    await optional_principal(request)


@get("/api/v1/recordings", responses=responses(401, 422))
async def list_recordings(
    request: Request[Any, Any, Any],
    recordings: Recordings,
    user_id: UserIdFilter = None,
    status: FromQuery[RecordingStatus | None] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> RecordingList:
    """Recordings, newest first, optionally one user's and/or one status."""
    await _accept_optional_token(request)
    return await recordings.list_recordings(user_id=user_id, status=status, limit=limit, offset=offset)


@get("/api/v1/recordings/{stream_id:str}", responses=responses(401, 404))
async def get_recording(
    request: Request[Any, Any, Any], stream_id: StreamIdPath, recordings: Recordings
) -> RecordingOut:
    """One recording by the id of the stream it was made from."""
    await _accept_optional_token(request)
    return await recordings.get_recording(_checked(stream_id))


async def _serve(
    request: Request[Any, Any, Any], recordings: RecordingService, stream_id: str, name: str, media_type: str
) -> Response[Any]:
    await _accept_optional_token(request)
    path = await recordings.media_file(_checked(stream_id), name, head=request.method == "HEAD")
    if isinstance(path, str):
        # Kept in object storage: the store serves the bytes (and byte ranges) itself. 302, which
        # every player and <video>/<img> follows, as GET (a HEAD gets a URL signed for HEAD).
        # The route's media type (video/mp4) does not fit an empty redirect body.
        return Redirect(path, status_code=302, headers=REDIRECT_HEADERS, media_type=MediaType.TEXT)
    response = file_response(request, path, media_type)
    response.headers.update(FILE_HEADERS)
    return response


@route(
    ["/api/v1/recordings/{stream_id:str}/video", "/recordings/vod/{stream_id:str}/video.mp4"],
    http_method=["GET", "HEAD"],
    media_type="video/mp4",
    responses={**responses(401, 404, 409, 416, 503), **file_responses("video/mp4"), **REDIRECT_RESPONSE},
)
async def recording_video(
    request: Request[Any, Any, Any], stream_id: StreamIdPath, recordings: Recordings
) -> Response[bytes]:
    """The MP4, also at the recording's file_path (byte ranges supported, so players can seek).

    A recording kept in object storage answers 302 to a presigned URL of the object instead.
    """
    return await _serve(request, recordings, stream_id, "video.mp4", "video/mp4")


@route(
    ["/api/v1/recordings/{stream_id:str}/thumbnail", "/recordings/vod/{stream_id:str}/thumbnail.jpg"],
    http_method=["GET", "HEAD"],
    media_type="image/jpeg",
    responses={**responses(401, 404, 409, 416, 503), **file_responses("image/jpeg"), **REDIRECT_RESPONSE},
)
async def recording_thumbnail(
    request: Request[Any, Any, Any], stream_id: StreamIdPath, recordings: Recordings
) -> Response[bytes]:
    """The JPEG thumbnail, also at the recording's thumbnail_path."""
    return await _serve(request, recordings, stream_id, "thumbnail.jpg", "image/jpeg")


@delete(
    "/api/v1/recordings/{stream_id:str}",
    status_code=200,
    guards=[requires_login],
    responses=responses(401, 403, 404, 503),
)
async def delete_recording(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> RecordingDeleted:
    """Delete a recording and its files (owner or admin)."""
    return await provide_recordings(request).delete_recording(_checked(stream_id), principal)


@post(
    "/api/v1/recordings/{stream_id:str}/retry",
    status_code=202,
    guards=[requires_login],
    responses=responses(401, 403, 404, 409),
)
async def retry_recording(
    stream_id: StreamIdPath, principal: Caller, request: Request[Any, Any, Any]
) -> RetryStarted:
    """Process a failed recording again (owner or admin)."""
    return await provide_recordings(request).retry(_checked(stream_id), principal)


def vod_router() -> Router:
    """Routes of the VOD service."""
    return Router(
        path="/",
        route_handlers=[
            list_recordings,
            get_recording,
            recording_video,
            recording_thumbnail,
            delete_recording,
            retry_recording,
        ],
        dependencies={
            "principal": Provide(provide_principal),
            "recordings": Provide(provide_recordings, sync_to_thread=False),
        },
        tags=["vod"],
    )
