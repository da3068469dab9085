"""Throwaway ISO-BMFF (fMP4) box reader used to check FFmpeg's fragmented-MP4 pipe output.

Not product code. Reads top-level boxes from a byte stream, and decodes what an LL-HLS
packager needs: moov (track ids, handler, timescale, trex defaults) and moof (tfhd, tfdt, trun).
"""

from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass, field

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts", b"dinf"}


def iter_boxes(data: bytes, start: int = 0, end: int | None = None):
    """Yield (type, payload_start, box_end) for boxes laid end to end in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"bad box {kind!r} size {size} at {pos}")
        yield kind, pos + header, pos + size
        pos += size


def read_top_level(stream):
    """Yield (type, whole_box_bytes) from a binary file object (e.g. a pipe), blocking."""
    while True:
        head = stream.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        extra = b""
        if size == 1:
            extra = stream.read(8)
            size = struct.unpack(">Q", extra)[0]
        body = stream.read(size - len(head) - len(extra))
        yield kind, head + extra + body


@dataclass
class Track:
    track_id: int
    handler: str = "?"
    timescale: int = 0
    default_duration: int = 0
    default_size: int = 0
    default_flags: int = 0


@dataclass
class TrafInfo:
    track_id: int
    base_decode_time: int
    sample_count: int
    duration: int  # sum of sample durations, in track timescale
    sizes: int  # bytes of samples
    first_flags: int
    sync_samples: list[int] = field(default_factory=list)  # indices of sync samples
    data_offset: int | None = None
    tfhd_flags: int = 0
    trun_flags: int = 0


def fullbox(data: bytes, pos: int) -> tuple[int, int, int]:
    vf = struct.unpack_from(">I", data, pos)[0]
    return vf >> 24, vf & 0xFFFFFF, pos + 4


def parse_moov(data: bytes) -> dict[int, Track]:
    tracks: dict[int, Track] = {}

    def walk(start: int, end: int, current: Track | None) -> None:
        for kind, p, e in iter_boxes(data, start, end):
            if kind == b"trak":
                t = Track(0)
                walk(p, e, t)
                tracks[t.track_id] = t
            elif kind == b"tkhd" and current is not None:
                version, _, q = fullbox(data, p)
                current.track_id = struct.unpack_from(">I", data, q + (16 if version == 1 else 8))[0]
            elif kind == b"mdhd" and current is not None:
                version, _, q = fullbox(data, p)
                current.timescale = struct.unpack_from(">I", data, q + (16 if version == 1 else 8))[0]
            elif kind == b"hdlr" and current is not None:
                _, _, q = fullbox(data, p)
                current.handler = data[q + 4 : q + 8].decode()
            elif kind == b"trex":
                _, _, q = fullbox(data, p)
                tid, _desc, dur, size, flags = struct.unpack_from(">5I", data, q)
                tracks.setdefault(tid, Track(tid))
                tr = tracks[tid]
                tr.default_duration, tr.default_size, tr.default_flags = dur, size, flags
            elif kind in CONTAINERS:
                walk(p, e, current)

    walk(8, len(data), None)  # data is the whole moov box
    return tracks


def is_sync(flags: int) -> bool:
    """sample_is_non_sync_sample is bit 16; sample_depends_on (bits 24-25) == 2 means I-frame."""
    return not (flags >> 16) & 1


def parse_moof(data: bytes, tracks: dict[int, Track]) -> list[TrafInfo]:
    out = []
    for kind, p, e in iter_boxes(data, 8, len(data)):
        if kind != b"traf":
            continue
        tfhd_flags = 0
        tid = 0
        dflt_dur = dflt_size = dflt_flags = None
        base = 0
        info = None
        for k, q, qe in iter_boxes(data, p, e):
            if k == b"tfhd":
                _, tfhd_flags, r = fullbox(data, q)
                tid = struct.unpack_from(">I", data, r)[0]
                r += 4
                if tfhd_flags & 0x01:
                    r += 8  # base_data_offset
                if tfhd_flags & 0x02:
                    r += 4  # sample_description_index
                if tfhd_flags & 0x08:
                    dflt_dur = struct.unpack_from(">I", data, r)[0]
                    r += 4
                if tfhd_flags & 0x10:
                    dflt_size = struct.unpack_from(">I", data, r)[0]
                    r += 4
                if tfhd_flags & 0x20:
                    dflt_flags = struct.unpack_from(">I", data, r)[0]
                    r += 4
                tr = tracks.get(tid, Track(tid))
                dflt_dur = tr.default_duration if dflt_dur is None else dflt_dur
                dflt_size = tr.default_size if dflt_size is None else dflt_size
                dflt_flags = tr.default_flags if dflt_flags is None else dflt_flags
            elif k == b"tfdt":
                version, _, r = fullbox(data, q)
                base = struct.unpack_from(">Q" if version == 1 else ">I", data, r)[0]
            elif k == b"trun":
                version, tf, r = fullbox(data, q)
                count = struct.unpack_from(">I", data, r)[0]
                r += 4
                data_offset = None
                first_flags = None
                if tf & 0x001:
                    data_offset = struct.unpack_from(">i", data, r)[0]
                    r += 4
                if tf & 0x004:
                    first_flags = struct.unpack_from(">I", data, r)[0]
                    r += 4
                total_dur = total_size = 0
                syncs = []
                f0 = None
                for i in range(count):
                    dur, size, flags = dflt_dur, dflt_size, dflt_flags
                    if tf & 0x100:
                        dur = struct.unpack_from(">I", data, r)[0]
                        r += 4
                    if tf & 0x200:
                        size = struct.unpack_from(">I", data, r)[0]
                        r += 4
                    if tf & 0x400:
                        flags = struct.unpack_from(">I", data, r)[0]
                        r += 4
                    elif i == 0 and first_flags is not None:
                        flags = first_flags
                    if tf & 0x800:
                        r += 4  # composition time offset
                    if i == 0:
                        f0 = flags
                    if is_sync(flags):
                        syncs.append(i)
                    total_dur += dur
                    total_size += size
                info = TrafInfo(tid, base, count, total_dur, total_size, f0 or 0, syncs, data_offset, tfhd_flags, tf)
        if info is not None:
            info.base_decode_time = base
            out.append(info)
    return out


def main() -> None:
    """Read an fMP4 stream on stdin; print one line per top-level box with arrival time."""
    stream = sys.stdin.buffer
    tracks: dict[int, Track] = {}
    t0 = time.monotonic()
    last_moof = None
    pending: list[TrafInfo] = []
    for kind, box in read_top_level(stream):
        now = time.monotonic() - t0
        if kind == b"moov":
            tracks = parse_moov(box)
            desc = " ".join(f"id={t.track_id}:{t.handler}@{t.timescale} trex(dur={t.default_duration},flags={t.default_flags:#x})" for t in tracks.values())
            print(f"{now:8.3f} moov {len(box)}B {desc}", flush=True)
        elif kind == b"moof":
            pending = parse_moof(box, tracks)
            gap = "" if last_moof is None else f" gap={now - last_moof:.3f}"
            last_moof = now
            parts = []
            for t in pending:
                ts = tracks[t.track_id].timescale or 1
                kf = "K" if is_sync(t.first_flags) else "-"
                parts.append(
                    f"[{tracks[t.track_id].handler} tfdt={t.base_decode_time / ts:.3f}s "
                    f"n={t.sample_count} dur={t.duration / ts:.3f}s first={kf} flags={t.first_flags:#010x} "
                    f"syncs={t.sync_samples} tfhd={t.tfhd_flags:#x} trun={t.trun_flags:#x}]"
                )
            print(f"{now:8.3f} moof {len(box)}B{gap} " + " ".join(parts), flush=True)
        else:
            print(f"{now:8.3f} {kind.decode(errors='replace')} {len(box)}B", flush=True)


if __name__ == "__main__":
    main()
