"""Recording bodies on the wire, as the spec shows them (plus a few additions)."""

from __future__ import annotations

from typing import Literal

import msgspec

RecordingStatus = Literal["processing", "ready", "failed"]


class RecordingOut(msgspec.Struct):
    id: int
    stream_id: str
    user_id: int
    username: str
    title: str
    duration_seconds: int | None
    file_path: str
    thumbnail_path: str
    file_size_bytes: int | None
    status: str
    created_at: str
    updated_at: str
    width: int | None
    height: int | None
    error: str | None
    # Additions: why a "processing" recording waits, and where a recording's files are kept.
    status_reason: str | None = None
    storage: Literal["local", "object_storage"] = "local"


class Pagination(msgspec.Struct):
    limit: int
    offset: int
    has_more: bool


class RecordingList(msgspec.Struct):
    recordings: list[RecordingOut]
    total: int
    pagination: Pagination


class RecordingDeleted(msgspec.Struct):
    message: str
    stream_id: str


class RetryStarted(msgspec.Struct):
    message: str
    stream_id: str
    status: str
