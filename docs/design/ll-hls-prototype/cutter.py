"""Throwaway segment/part cutter: fMP4 on stdin -> init.mp4, seg_N.m4s, part files, playlist.

usage: cutter.py OUT_DIR [FIRST_SEGMENT_NUMBER] [SEGMENT_TARGET_S]
Each top-level moof+mdat pair is one part. A segment closes when the next part starts with a
video keyframe and the open segment's media duration >= target. Durations come from the
video track's trun sample durations (tfdt of the next fragment would give the same).
Writes index.json with (segment number, duration, parts[(duration, independent)]).
"""

from __future__ import annotations

import json
import os
import sys

import boxes


def main() -> None:
    out = sys.argv[1]
    number = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    target = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    os.makedirs(out, exist_ok=True)
    tracks: dict[int, boxes.Track] = {}
    init = b""
    video_id = None
    seg_parts: list[tuple[bytes, float, bool]] = []
    segments = []
    moof = None

    def close_segment() -> None:
        nonlocal number, seg_parts
        if not seg_parts:
            return
        for i, (data, _dur, _ind) in enumerate(seg_parts):
            with open(f"{out}/part_{number}_{i}.m4s", "wb") as f:
                f.write(data)
        tmp = f"{out}/.seg_{number}.m4s.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(p[0] for p in seg_parts))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, f"{out}/seg_{number}.m4s")
        segments.append({"n": number, "dur": sum(p[1] for p in seg_parts), "parts": [[p[1], p[2]] for p in seg_parts]})
        number += 1
        seg_parts = []

    for kind, box in boxes.read_top_level(sys.stdin.buffer):
        if kind in (b"ftyp",):
            init = box
        elif kind == b"moov":
            init += box
            tracks = boxes.parse_moov(box)
            video_id = next((t.track_id for t in tracks.values() if t.handler == "vide"), None)
            with open(f"{out}/init.mp4", "wb") as f:
                f.write(init)
        elif kind == b"moof":
            moof = box
        elif kind == b"mdat" and moof is not None:
            trafs = boxes.parse_moof(moof, tracks)
            v = next(t for t in trafs if t.track_id == video_id)
            dur = v.duration / tracks[video_id].timescale
            independent = boxes.is_sync(v.first_flags)
            if independent and seg_parts and sum(p[1] for p in seg_parts) >= target:
                close_segment()
            seg_parts.append((moof + box, dur, independent))
            moof = None
    close_segment()  # end of stream: the open segment is complete too
    with open(f"{out}/index.json", "w") as f:
        json.dump(segments, f, indent=1)
    print(f"{out}: {len(segments)} segments, durations {[round(s['dur'], 3) for s in segments]}", file=sys.stderr)


if __name__ == "__main__":
    main()
