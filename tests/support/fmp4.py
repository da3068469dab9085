"""Real fMP4 recordings for tests, laid out on disk as the LL-HLS packager writes them.

One "run" is one publisher session: FFmpeg encodes test video + tone to MPEG-TS (what OBS sends
over SRT), a second FFmpeg remuxes it with the ingest's fMP4 flags, and `split_fmp4` cuts that
into `init_{run}.mp4` (ftyp+moov) and `seg_{run}_{msn}.m4s` files (moof+mdat pairs), starting a
new segment at every fragment that opens with a video keyframe. A small top-level box reader
is enough for that; it is test code, not the product's parser.
"""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# The ingest's fragmented-MP4 flags (design §2.7): init at once, then ~200 ms fragments, and a
# new fragment at every keyframe so segments can start on one.
INGEST_MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe+delay_moov"
FRAG_DURATION_US = 200_000

_TRUN_FIRST_SAMPLE_FLAGS = 0x004
_TRUN_DATA_OFFSET = 0x001
_TRUN_SAMPLE_DURATION = 0x100
_TRUN_SAMPLE_SIZE = 0x200
_TRUN_SAMPLE_FLAGS = 0x400
_TFHD_DEFAULT_SAMPLE_FLAGS = 0x20
_NON_SYNC = 0x0001_0000


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int, int]]:
    """Return (type, box_start, payload_start, box_end) of the boxes laid end to end in data."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"bad box {kind!r} of {size} bytes at {pos}")
        out.append((kind, pos, pos + header, pos + size))
        pos += size
    return out


def _find(data: bytes, start: int, end: int, path: list[bytes]) -> list[tuple[int, int]]:
    """Return the payload spans of every box at `path` below data[start:end]."""
    spans = []
    for kind, _box, payload, box_end in iter_boxes(data, start, end):
        if kind == path[0]:
            spans += [(payload, box_end)] if len(path) == 1 else _find(data, payload, box_end, path[1:])
    return spans


def _video_track_id(moov: bytes) -> int:
    for trak, trak_end in _find(moov, 0, len(moov), [b"moov", b"trak"]):
        (hdlr, _) = _find(moov, trak, trak_end, [b"mdia", b"hdlr"])[0]
        if moov[hdlr + 8 : hdlr + 12] == b"vide":
            (tkhd, _) = _find(moov, trak, trak_end, [b"tkhd"])[0]
            version = moov[tkhd]
            return int(struct.unpack_from(">I", moov, tkhd + (20 if version == 1 else 12))[0])
    raise ValueError("no video track in the moov")


def _trex_default_flags(moov: bytes, track_id: int) -> int:
    for trex, _ in _find(moov, 0, len(moov), [b"moov", b"mvex", b"trex"]):
        tid, _desc, _dur, _size, flags = struct.unpack_from(">5I", moov, trex + 4)
        if tid == track_id:
            return int(flags)
    return 0


def _starts_with_keyframe(moof: bytes, video_id: int, trex_flags: int) -> bool:
    """Tell whether the moof's video run starts with a sync sample."""
    for traf, traf_end in _find(moof, 0, len(moof), [b"moof", b"traf"]):
        (tfhd, _) = _find(moof, traf, traf_end, [b"tfhd"])[0]
        tfhd_flags = int.from_bytes(moof[tfhd + 1 : tfhd + 4], "big")
        if struct.unpack_from(">I", moof, tfhd + 4)[0] != video_id:
            continue
        default_flags = trex_flags
        if tfhd_flags & _TFHD_DEFAULT_SAMPLE_FLAGS:
            offset = tfhd + 8
            offset += 8 if tfhd_flags & 0x01 else 0
            offset += 4 if tfhd_flags & 0x02 else 0
            offset += 4 if tfhd_flags & 0x08 else 0
            offset += 4 if tfhd_flags & 0x10 else 0
            (default_flags,) = struct.unpack_from(">I", moof, offset)
        (trun, _) = _find(moof, traf, traf_end, [b"trun"])[0]
        flags = int.from_bytes(moof[trun + 1 : trun + 4], "big")
        pos = trun + 8 + (4 if flags & _TRUN_DATA_OFFSET else 0)
        if flags & _TRUN_FIRST_SAMPLE_FLAGS:
            (first,) = struct.unpack_from(">I", moof, pos)
        elif flags & _TRUN_SAMPLE_FLAGS:
            pos += (4 if flags & _TRUN_SAMPLE_DURATION else 0) + (4 if flags & _TRUN_SAMPLE_SIZE else 0)
            (first,) = struct.unpack_from(">I", moof, pos)
        else:
            first = default_flags
        return not first & _NON_SYNC
    return False  # an audio-only fragment never starts a segment


def _read_top_level(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """Yield (type, whole box) from a binary stream, one top-level box at a time."""
    while len(head := stream.read(8)) == 8:
        size, kind = struct.unpack(">I4s", head)
        if size == 1:
            head += stream.read(8)
            (size,) = struct.unpack_from(">Q", head, 8)
        body = stream.read(size - len(head)) if size else stream.read()
        yield kind, head + body


def split_fmp4_stream(stream: BinaryIO, media_dir: Path, run: int, first_msn: int) -> list[Path]:
    """Cut a fragmented MP4 read from `stream` into init_{run}.mp4 and seg_{run}_{msn}.m4s.

    A segment starts at every fragment that opens with a video keyframe. Return the segments.
    """
    media_dir.mkdir(parents=True, exist_ok=True)
    init = b""
    video_id = trex_flags = 0
    moof = b""
    paths: list[Path] = []
    out: BinaryIO | None = None
    try:
        for kind, box in _read_top_level(stream):
            if kind == b"ftyp":
                init = box
            elif kind == b"moov":
                video_id = _video_track_id(box)
                trex_flags = _trex_default_flags(box, video_id)
                (media_dir / f"init_{run}.mp4").write_bytes(init + box)
            elif kind == b"moof":
                moof = box
            elif kind == b"mdat" and moof:
                if out is None or _starts_with_keyframe(moof, video_id, trex_flags):
                    if out is not None:
                        out.close()
                    paths.append(media_dir / f"seg_{run}_{first_msn + len(paths)}.m4s")
                    out = paths[-1].open("wb")
                out.write(moof + box)
                moof = b""
    finally:
        if out is not None:
            out.close()
    return paths


def split_fmp4(fmp4: bytes, media_dir: Path, run: int, first_msn: int) -> list[Path]:
    """Cut a fragmented MP4 into init_{run}.mp4 and seg_{run}_{msn}.m4s; return the segments."""
    return split_fmp4_stream(io.BytesIO(fmp4), media_dir, run, first_msn)


@dataclass(frozen=True)
class WrittenRun:
    init: Path
    segments: list[Path]


def make_fmp4_run(
    ffmpeg: str,
    media_dir: Path,
    seconds: float,
    *,
    run: int = 1,
    first_msn: int = 0,
    size: str = "640x360",
    black_seconds: float = 0.0,
    gop_frames: int = 30,
    extra_video_args: tuple[str, ...] = (),
    audio: bool = True,
) -> WrittenRun:
    """Write one publisher session of `seconds` (30 fps, one keyframe a second) as init + segments."""
    video = f"testsrc2=size={size}:rate=30"
    if black_seconds:
        video += f",drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='lt(t,{black_seconds})'"
    encode = subprocess.run(
        [
            ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "lavfi", "-i", video,
            *(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] if audio else []),
            "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop_frames), "-pix_fmt", "yuv420p",
            *extra_video_args,
            *(["-c:a", "aac"] if audio else []),
            "-f", "mpegts", "pipe:1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    remux = subprocess.run(
        [
            ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "mpegts", "-i", "pipe:0",
            "-map", "0", "-c", "copy", "-bsf:a", "aac_adtstoasc",
            "-f", "mp4", "-movflags", INGEST_MOVFLAGS, "-frag_duration", str(FRAG_DURATION_US),
            "pipe:1",
        ],
        input=encode.stdout,
        check=True,
        capture_output=True,
    )  # fmt: skip
    segments = split_fmp4(remux.stdout, media_dir, run, first_msn)
    return WrittenRun(media_dir / f"init_{run}.mp4", segments)
