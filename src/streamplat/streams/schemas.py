"""Stream bodies on the wire: the spec's fields, plus a few additions (never renames)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

StreamStatus = Literal["created", "waiting", "active", "stopped"]


class StreamCreate(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    # Absent means empty: the spec's client sends only what it was given (null is refused).
    title: Annotated[str, msgspec.Meta(max_length=200)] = ""
    description: Annotated[str, msgspec.Meta(max_length=5000)] = ""


class StreamCreated(msgspec.Struct):
    stream_id: str
    name: str
    title: str
    description: str
    user_id: int
    username: str
    status: str
    created_at: str


class StreamStarted(msgspec.Struct):
    stream_id: str
    status: str
    port: int
    srt_url: str
    hls_url: str
    message: str
    stream_key: str


# Header carrying the cluster's internal token on calls between nodes (streamplat.nodes).
INTERNAL_TOKEN_HEADER = "x-streamplat-internal"
# Marks a request one node sends another on a client's behalf: it is answered locally, never
# passed on again (two nodes whose views of an owner briefly differ cannot bounce it).
FORWARDED_HEADER = "x-streamplat-forwarded"


class InternalStop(msgspec.Struct, forbid_unknown_fields=True):
    """POST /internal/streams/{id}/stop: another node forwards a stop it authorised."""

    reason: str | None = None


class StreamStopped(msgspec.Struct):
    stream_id: str
    status: str
    user_id: int
    username: str
    message: str
    recording: bool


class StreamDetail(msgspec.Struct):
    """GET /api/streams/{id}; srt_url and stream_key only for the owner and admins."""

    stream_id: str
    name: str
    title: str
    description: str
    status: str
    user_id: int
    username: str
    port: int | None
    start_time: str | None
    stop_time: str | None
    viewer_count: int
    duration_seconds: int
    hls_url: str
    created_at: str
    status_reason: str | None
    srt_url: str | None = None
    stream_key: str | None = None


class StreamSummary(msgspec.Struct):
    stream_id: str
    name: str
    title: str
    status: str
    created_at: str
    viewer_count: int
    user_id: int
    username: str
    start_time: str | None
    hls_url: str


class StreamList(msgspec.Struct):
    streams: list[StreamSummary]
    total: int
    limit: int
    offset: int


class StreamDeleted(msgspec.Struct):
    message: str
    stream_id: str


class KeyRotated(msgspec.Struct):
    stream_id: str
    stream_key: str
    message: str


class IngestStatusOut(msgspec.Struct):
    """GET /stream/{id}/status on the Stream App."""

    stream_id: str
    status: str
    ffmpeg_running: bool
    hls_files_count: int
    uptime_seconds: int
    publisher_connected: bool
    viewer_count: int
    bitrate_kbps: float | None
    fps: float | None
    restarts: int
    last_error: str | None
    # LL-HLS live window (design §3.12): target/part durations, codecs and per segment msn,
    # run, media_start_seconds, duration_seconds and parts. None when the stream is not live.
    hls: dict[str, Any] | None = None
