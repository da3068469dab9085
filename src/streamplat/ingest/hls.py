"""Streams recorded before LL-HLS (FFmpeg's MPEG-TS muxer): salvage after a kill and the final
ENDLIST, so their recordings still package. New streams use `streamplat.hls.disk`.

Blocking file I/O throughout: callers run these in a thread.
"""

from __future__ import annotations

import os
import pathlib

from streamplat.ingest.ffmpeg import (
    PLAYLIST_NAME,
    plan_salvage,
    playlist_with_segments,
    segment_name,
    ts_duration_seconds,
    with_endlist,
)


def salvage_segments(hls_dir: pathlib.Path, segment_seconds: float) -> list[int]:
    """List segments a killed FFmpeg left outside the playlist; returns their numbers.

    Without this, the next FFmpeg (append_list) would reuse their numbers and overwrite them.
    """
    playlist = hls_dir / PLAYLIST_NAME
    try:
        text: str | None = playlist.read_text()
    except FileNotFoundError:
        text = None
    plan = plan_salvage(text, os.listdir(hls_dir))
    if not plan.append:
        return []
    for source, target in plan.renames:
        path = hls_dir / source
        # A killed muxer may stop mid-packet; whole 188-byte packets keep the file clean TS.
        size = path.stat().st_size
        os.truncate(path, size - size % 188)
        os.replace(path, hls_dir / target)
    segments = []
    for number in plan.append:
        duration = ts_duration_seconds((hls_dir / segment_name(number)).read_bytes())
        segments.append((number, duration if duration is not None else segment_seconds))
    write_atomically(playlist, playlist_with_segments(text, segments, segment_seconds))
    return list(plan.append)


def finalise_playlist(hls_dir: pathlib.Path, segment_seconds: float = 2.0) -> None:
    """End a stream's playlist with #EXT-X-ENDLIST (atomically); no playlist, nothing to do.

    Segments a killed FFmpeg left outside the playlist are listed first, so the playlist and
    the recording keep them. Only for a stream with no FFmpeg running (after stop(), or for
    streams left live by a crash). Blocking file I/O; `segment_seconds` is the duration
    assumed for a salvaged segment whose timestamps cannot be read.
    """
    if not hls_dir.is_dir():
        return
    salvage_segments(hls_dir, segment_seconds)
    playlist = hls_dir / PLAYLIST_NAME
    try:
        text = playlist.read_text()
    except FileNotFoundError:
        return
    ended = with_endlist(text)
    if ended != text:
        write_atomically(playlist, ended)


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Replace `path` so that viewers read either the old or the new playlist, never half."""
    temporary = path.with_name(f".{path.name}.streamplat.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
