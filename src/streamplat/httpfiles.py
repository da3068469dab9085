"""Serve big files (recordings, thumbnails) with byte ranges and conditional requests.

Litestar's own `File` response (2.25) sends ETag and Last-Modified but ignores `Range`,
`If-Range`, `If-None-Match` and `If-Modified-Since`, so a browser could not seek in an MP4
without downloading all of it. `file_response` answers those itself and streams the bytes
with a `Stream` response, a chunk at a time, so a 1 GB recording never sits in memory.

Only single ranges are served: a multi-range request gets the whole file, which RFC 9110
allows (a server MAY ignore `Range`) and which spares us multipart/byteranges bodies that
no video player asks for.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

import anyio
from litestar import Request, Response
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

__all__ = ["CHUNK_SIZE", "file_response", "file_responses", "parse_range"]

CHUNK_SIZE: Final = 256 * 1024
"""Bytes read per chunk: big enough to keep syscalls few, small enough to stay cheap per viewer."""

_RANGE_RE: Final = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)


def file_responses(media_type: str) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of what `file_response` may answer besides 200: a byte range (206,
    same media type) and 304 for a conditional request that still holds."""
    return {
        206: ResponseSpec(
            data_container=bytes,
            media_type=media_type,
            description="Partial Content: the requested byte range",
            generate_examples=False,
        ),
        304: ResponseSpec(data_container=None, description="Not Modified", generate_examples=False),
    }


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Parse a single RFC 9110 byte range into inclusive (start, end) for a file of `size` bytes."""
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        # Malformed, another unit, or several ranges (the comma never matches): serve it all.
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        if not last:
            return None  # "bytes=-" names no range at all
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        if size == 0:
            # RFC 9110 calls a non-zero suffix satisfiable even on an empty file, yet there is
            # no byte to put in a 206; the whole (empty) file is the honest answer.
            return None
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # an invalid range-spec; RFC 9110 lets us ignore the header
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def file_response(
    request: Request[Any, Any, Any], path: Path, media_type: str, *, filename: str | None = None
) -> Response[Any]:
    """Answer GET/HEAD for a file: 200, 206, 304 or 416, streamed in chunks.

    Raises FileNotFoundError (or another OSError) if `path` cannot be stat'ed; the caller
    maps that to its 404. Cache-Control is the caller's to set on the returned response.
    """
    # One stat, used for every validator and length, so they all describe the same version.
    stat = path.stat()
    size = stat.st_size
    etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
    last_modified = formatdate(stat.st_mtime, usegmt=True)
    headers: dict[str, str] = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}
    if filename is not None:
        headers["Content-Disposition"] = _content_disposition(filename)

    if _not_modified(request, etag, int(stat.st_mtime)):
        return Response(content=b"", status_code=304, headers=headers, media_type=media_type)

    byte_range: tuple[int, int] | Literal["unsatisfiable"] | None = None
    range_header = request.headers.get("range")
    if range_header is not None and _if_range_holds(request.headers.get("if-range"), etag, last_modified):
        byte_range = parse_range(range_header, size)

    if byte_range == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{size}"
        return Response(
            content={
                "error": "Range Not Satisfiable",
                "message": f"requested range is outside the file's {size} bytes",
                "code": 416,
            },
            status_code=416,
            headers=headers,
            media_type="application/json",
        )

    if byte_range is None:
        status, start, length = 200, 0, size
    else:
        start, end = byte_range
        status, length = 206, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)

    # HEAD gets the very headers GET would (RFC 9110 §9.3.2) and no body; Litestar does not
    # tell route handlers apart by method, so the body is left out here.
    body: AsyncIterator[bytes] = _no_body() if request.method == "HEAD" else _read_chunks(path, start, length)
    return Stream(body, status_code=status, headers=headers, media_type=media_type)


def _not_modified(request: Request[Any, Any, Any], etag: str, mtime_seconds: int) -> bool:
    """Whether the client's cached copy is current (RFC 9110 §13.2.2 order)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        # If-None-Match wins over If-Modified-Since; it uses the weak comparison.
        if if_none_match.strip() == "*":
            return True
        return any(_opaque(tag) == _opaque(etag) for tag in if_none_match.split(","))
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False  # an unparseable date must be ignored, not treated as "modified"
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # "-0000" parses naive; HTTP dates are always GMT
    # HTTP dates have one-second resolution, so compare the mtime truncated to seconds.
    return mtime_seconds <= since.timestamp()


def _if_range_holds(if_range: str | None, etag: str, last_modified: str) -> bool:
    """Whether a Range may be honoured: no If-Range, or one naming the current version."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        # If-Range uses the strong comparison: a weak tag never matches.
        return value == etag
    return value == last_modified


def _opaque(tag: str) -> str:
    """The entity tag without its weakness marker, for the weak comparison."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def _content_disposition(filename: str) -> str:
    """An attachment header carrying `filename` safely, with a UTF-8 form for non-ASCII names."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("\\", "_").replace('"', "_")
    fallback = "".join(ch if ch.isprintable() else "_" for ch in fallback)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _no_body() -> AsyncIterator[bytes]:
    """An empty body."""
    return
    yield  # pragma: no cover - makes this an async generator


async def _read_chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    """Yield `length` bytes of `path` from `start`, reading in a worker thread."""
    async with await anyio.open_file(path, "rb") as file:
        await file.seek(start, os.SEEK_SET)
        remaining = length
        while remaining > 0:
            chunk = await file.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                # The file shrank since the stat; stopping short makes the server drop the
                # connection, which tells the client the body is incomplete.
                return
            remaining -= len(chunk)
            yield chunk
