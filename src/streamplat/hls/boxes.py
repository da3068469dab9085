"""ISO-BMFF (fragmented MP4) reading for the LL-HLS packager. Pure: bytes in, values out.

FFmpeg's `-f mp4 -movflags empty_moov+default_base_moof+frag_keyframe+delay_moov` writes an
init (`ftyp` + `moov`) and then one `moof` + `mdat` pair per fragment (docs/design/ll-hls.md
§2). This module splits that byte stream into top-level boxes whatever the chunking of the pipe
(`BoxSplitter`), reads the tracks of a `moov` (`parse_moov`) and the timing of a `moof`
(`parse_moof`). Durations are integer ticks of each track's timescale, summed from the `trun`
sample durations (or the `tfhd`/`trex` defaults), never taken from a configured target.

Public API (kept stable; the VOD packaging reads recordings with it too):
`BoxSplitter`, `iter_boxes`, `parse_moov`, `parse_moof`, `Track`, `TrackTiming`, `BoxError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "BoxError",
    "BoxSplitter",
    "Track",
    "TrackTiming",
    "is_sync",
    "iter_boxes",
    "parse_moof",
    "parse_moov",
]

# A box larger than this is refused: no fragment or init of a live stream comes near it, and a
# corrupt size field must not make the splitter buffer gigabytes.
MAX_BOX_SIZE = 256 * 1024 * 1024

_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"edts", b"dinf"})
_SAMPLE_ENTRY_AUDIO = frozenset({b"mp4a", b"Opus", b"fLaC", b"ac-3", b"ec-3", b".mp3"})
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I32 = struct.Struct(">i")

# tfhd flags
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
# trun flags
_TRUN_DATA_OFFSET = 0x001
_TRUN_FIRST_FLAGS = 0x004
_TRUN_DURATION = 0x100
_TRUN_SIZE = 0x200
_TRUN_FLAGS = 0x400
_TRUN_CTS = 0x800


class BoxError(ValueError):
    """The bytes are not the ISO-BMFF this module reads (bad size, missing box, bad field)."""


def is_sync(sample_flags: int) -> bool:
    """True when the sample flags mark a sync sample (sample_is_non_sync_sample, bit 16, clear)."""
    return not (sample_flags >> 16) & 1


def iter_boxes(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, payload_start, box_end) for the boxes laid end to end in data[start:end].

    Raises BoxError for a size that is below the header or runs past `end`.
    """
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise BoxError(f"truncated box header at {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise BoxError(f"truncated largesize header at {pos}")
            size = _U64.unpack_from(data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos  # "extends to the end" (only legal for the last box)
        if size < header or pos + size > end:
            raise BoxError(f"bad size {size} for box {kind!r} at {pos}")
        yield bytes(kind), pos + header, pos + size
        pos += size


class BoxSplitter:
    """Incremental top-level box splitter: feed it chunks, get back whole boxes.

    `feed(chunk)` returns `[(type, box_bytes), ...]` for every box completed by the chunk, in
    order, whatever the chunk boundaries. A partial box stays buffered; `pending` says how many
    bytes. At EOF the caller drops whatever is pending (a truncated tail is never a box).
    `size == 0` ("to the end of file") cannot be split incrementally and raises BoxError, as
    does a size below its header or above MAX_BOX_SIZE.
    """

    def __init__(self, max_box_size: int = MAX_BOX_SIZE) -> None:
        self._buffer = bytearray()
        self._max = max_box_size

    @property
    def pending(self) -> int:
        """Bytes held back as the start of a box not complete yet."""
        return len(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        buf = self._buffer
        buf += chunk
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 8:
            size = _U32.unpack_from(buf, pos)[0]
            header = 8
            if size == 1:
                if n - pos < 16:
                    break
                size = _U64.unpack_from(buf, pos + 8)[0]
                header = 16
            kind = bytes(buf[pos + 4 : pos + 8])
            if size == 0:
                raise BoxError(f"box {kind!r} of unknown size (0) cannot be read from a stream")
            if size < header:
                raise BoxError(f"bad size {size} for box {kind!r}")
            if size > self._max:
                raise BoxError(f"box {kind!r} of {size} bytes is larger than {self._max}")
            if n - pos < size:
                break
            out.append((kind, bytes(buf[pos : pos + size])))
            pos += size
        if pos:
            del buf[:pos]
        return out


@dataclass(frozen=True, slots=True)
class Track:
    """One track of an init segment (`moov/trak` plus its `mvex/trex` defaults)."""

    track_id: int
    kind: str  # "video", "audio" or the raw handler type (e.g. "subt")
    timescale: int
    default_duration: int
    default_size: int
    default_flags: int
    codec: str  # RFC 6381 codec string, e.g. "avc1.42c01e", "mp4a.40.2", "Opus"; "" if unknown


@dataclass(frozen=True, slots=True)
class TrackTiming:
    """What one `traf` of a `moof` says about its track's samples."""

    track_id: int
    base_decode_time: int  # tfdt, in the track's timescale
    duration: int  # sum of the sample durations, in ticks
    sample_count: int
    first_sync: bool  # the first sample is a sync sample (a keyframe for video)
    any_sync: bool
    size: int  # bytes of sample data


def _full_box(data: bytes, pos: int) -> tuple[int, int, int]:
    word = _U32.unpack_from(data, pos)[0]
    return word >> 24, word & 0xFFFFFF, pos + 4


def _descriptor(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, payload_start, payload_end) of an MPEG-4 descriptor (esds) at pos."""
    if pos >= end:
        raise BoxError("truncated descriptor")
    tag = data[pos]
    pos += 1
    length = 0
    for _ in range(4):
        if pos >= end:
            raise BoxError("truncated descriptor length")
        byte = data[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, min(pos + length, end)


def _esds_codec(data: bytes, start: int, end: int) -> str:
    """`mp4a.OO[.A]` from an esds payload: object type and, if present, the ASC's object type."""
    _, _, pos = _full_box(data, start)
    tag, pos, es_end = _descriptor(data, pos, end)
    if tag != 0x03:
        return "mp4a"
    flags = data[pos + 2]
    pos += 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + data[pos]
    if flags & 0x20:
        pos += 2
    tag, pos, dc_end = _descriptor(data, pos, es_end)
    if tag != 0x04:
        return "mp4a"
    object_type = data[pos]
    codec = f"mp4a.{object_type:x}"
    pos += 13
    if pos < dc_end:
        tag, pos, dsi_end = _descriptor(data, pos, dc_end)
        if tag == 0x05 and dsi_end > pos:
            aot = data[pos] >> 3
            if aot == 31 and dsi_end > pos + 1:
                aot = 32 + (((data[pos] & 0x07) << 3) | (data[pos + 1] >> 5))
            codec += f".{aot}"
    return codec


def _sample_entry_codec(data: bytes, start: int, end: int) -> str:
    """Codec string of the first sample entry in an `stsd` payload."""
    _, _, pos = _full_box(data, start)
    pos += 4  # entry_count
    for kind, payload, box_end in iter_boxes(data, pos, end):
        name = kind.decode("latin-1")
        if kind in (b"avc1", b"avc3"):
            children = payload + 78  # VisualSampleEntry fields
            for child, cpos, _cend in iter_boxes(data, children, box_end):
                if child == b"avcC":
                    return f"{name}.{data[cpos + 1]:02x}{data[cpos + 2]:02x}{data[cpos + 3]:02x}"
            return name
        if kind in (b"hvc1", b"hev1"):
            return name
        if kind == b"mp4a":
            children = payload + 28  # AudioSampleEntry fields
            for child, cpos, cend in iter_boxes(data, children, box_end):
                if child == b"esds":
                    return _esds_codec(data, cpos, cend)
            return "mp4a"
        return name
    return ""


def parse_moov(moov: bytes) -> tuple[Track, ...]:
    """The tracks of a whole `moov` box (header included), in `trak` order.

    Raises BoxError when the box is not a `moov`, a track lacks its id or timescale, or a size
    is broken.
    """
    if moov[4:8] != b"moov":
        raise BoxError(f"expected a moov box, got {moov[4:8]!r}")
    found: list[dict[str, object]] = []
    defaults: dict[int, tuple[int, int, int]] = {}

    def walk(start: int, end: int, current: dict[str, object] | None) -> None:
        for kind, pos, box_end in iter_boxes(moov, start, end):
            if kind == b"trak":
                track: dict[str, object] = {}
                walk(pos, box_end, track)
                found.append(track)
            elif kind == b"tkhd" and current is not None:
                version, _, q = _full_box(moov, pos)
                current["id"] = _U32.unpack_from(moov, q + (16 if version == 1 else 8))[0]
            elif kind == b"mdhd" and current is not None:
                version, _, q = _full_box(moov, pos)
                current["timescale"] = _U32.unpack_from(moov, q + (16 if version == 1 else 8))[0]
            elif kind == b"hdlr" and current is not None:
                _, _, q = _full_box(moov, pos)
                handler = moov[q + 4 : q + 8]
                current["kind"] = {b"vide": "video", b"soun": "audio"}.get(handler, handler.decode("latin-1"))
            elif kind == b"stsd" and current is not None:
                current["codec"] = _sample_entry_codec(moov, pos, box_end)
            elif kind == b"trex":
                _, _, q = _full_box(moov, pos)
                track_id, _desc, duration, size, flags = struct.unpack_from(">5I", moov, q)
                defaults[track_id] = (duration, size, flags)
            elif kind in _CONTAINERS:
                walk(pos, box_end, current)

    try:
        walk(8, len(moov), None)
    except (struct.error, IndexError) as exc:
        raise BoxError(f"truncated field in moov: {exc}") from exc
    tracks = []
    for item in found:
        if "id" not in item or not item.get("timescale"):
            raise BoxError("a trak without tkhd track id or mdhd timescale")
        track_id = int(item["id"])  # type: ignore[call-overload]
        duration, size, flags = defaults.get(track_id, (0, 0, 0))
        tracks.append(
            Track(
                track_id=track_id,
                kind=str(item.get("kind", "")),
                timescale=int(item["timescale"]),  # type: ignore[call-overload]
                default_duration=duration,
                default_size=size,
                default_flags=flags,
                codec=str(item.get("codec", "")),
            )
        )
    return tuple(tracks)


def parse_moof(moof: bytes, tracks: tuple[Track, ...] | dict[int, Track]) -> tuple[TrackTiming, ...]:
    """Per-`traf` timing of a whole `moof` box (header included), in `traf` order.

    `tracks` (from `parse_moov`) supplies the `trex` defaults. Every `traf` must use
    default-base-is-moof without an explicit base data offset and carry a `tfdt`: only then can
    a `moof` + `mdat` pair be served and concatenated on its own (design §3.2). Raises BoxError
    otherwise, or for an unknown track.
    """
    if moof[4:8] != b"moof":
        raise BoxError(f"expected a moof box, got {moof[4:8]!r}")
    by_id = tracks if isinstance(tracks, dict) else {t.track_id: t for t in tracks}
    out: list[TrackTiming] = []
    try:
        for kind, pos, end in iter_boxes(moof, 8, len(moof)):
            if kind == b"traf":
                out.append(_parse_traf(moof, pos, end, by_id))
    except (struct.error, IndexError) as exc:
        raise BoxError(f"truncated field in moof: {exc}") from exc
    return tuple(out)


def _parse_traf(data: bytes, start: int, end: int, tracks: dict[int, Track]) -> TrackTiming:
    track: Track | None = None
    base: int | None = None
    duration = size = count = 0
    first_sync = any_sync = False
    default_duration = default_size = default_flags = 0
    for kind, pos, _box_end in iter_boxes(data, start, end):
        if kind == b"tfhd":
            _, flags, q = _full_box(data, pos)
            track_id = _U32.unpack_from(data, q)[0]
            q += 4
            track = tracks.get(track_id)
            if track is None:
                raise BoxError(f"traf for unknown track {track_id}")
            if flags & _TFHD_BASE_DATA_OFFSET or not flags & _TFHD_DEFAULT_BASE_IS_MOOF:
                raise BoxError("traf is not default-base-is-moof (needs -movflags default_base_moof)")
            default_duration, default_size, default_flags = (
                track.default_duration,
                track.default_size,
                track.default_flags,
            )
            if flags & _TFHD_SAMPLE_DESCRIPTION:
                q += 4
            if flags & _TFHD_DEFAULT_DURATION:
                default_duration = _U32.unpack_from(data, q)[0]
                q += 4
            if flags & _TFHD_DEFAULT_SIZE:
                default_size = _U32.unpack_from(data, q)[0]
                q += 4
            if flags & _TFHD_DEFAULT_FLAGS:
                default_flags = _U32.unpack_from(data, q)[0]
        elif kind == b"tfdt":
            version, _, q = _full_box(data, pos)
            base = (_U64 if version == 1 else _U32).unpack_from(data, q)[0]
        elif kind == b"trun":
            if track is None:
                raise BoxError("trun before tfhd")
            _, flags, q = _full_box(data, pos)
            samples = _U32.unpack_from(data, q)[0]
            q += 4
            first_flags: int | None = None
            if flags & _TRUN_DATA_OFFSET:
                q += 4
            if flags & _TRUN_FIRST_FLAGS:
                first_flags = _U32.unpack_from(data, q)[0]
                q += 4
            per_duration = bool(flags & _TRUN_DURATION)
            per_size = bool(flags & _TRUN_SIZE)
            per_flags = bool(flags & _TRUN_FLAGS)
            stride = 4 * (per_duration + per_size + per_flags + bool(flags & _TRUN_CTS))
            if q + stride * samples > end:
                raise BoxError("trun sample table runs past its traf")
            for i in range(samples):
                r = q
                sample_duration, sample_size, sample_flags = default_duration, default_size, default_flags
                if per_duration:
                    sample_duration = _U32.unpack_from(data, r)[0]
                    r += 4
                if per_size:
                    sample_size = _U32.unpack_from(data, r)[0]
                    r += 4
                if per_flags:
                    sample_flags = _U32.unpack_from(data, r)[0]
                elif i == 0 and first_flags is not None:
                    sample_flags = first_flags
                sync = is_sync(sample_flags)
                if count == 0 and i == 0:
                    first_sync = sync
                any_sync = any_sync or sync
                duration += sample_duration
                size += sample_size
                q += stride
            count += samples
    if track is None:
        raise BoxError("traf without tfhd")
    if base is None:
        raise BoxError(f"traf of track {track.track_id} without tfdt")
    return TrackTiming(
        track_id=track.track_id,
        base_decode_time=base,
        duration=duration,
        sample_count=count,
        first_sync=first_sync,
        any_sync=any_sync,
        size=size,
    )
