"""SegmentCounter: the stream-status page's segment count without listing the directory per poll."""

from __future__ import annotations

from pathlib import Path

from streamplat.streams.services import SegmentCounter


def test_counts_segments_and_follows_changes(tmp_path: Path) -> None:
    counter = SegmentCounter(max_age=60.0)
    hls = tmp_path / "hls"
    assert counter.count(hls) == 0  # no directory yet
    hls.mkdir()
    for name in ("segment_0.ts", "segment_1.ts", "stream.m3u8", "segment_2.ts.tmp"):
        (hls / name).write_bytes(b"x")
    assert counter.count(hls) == 2
    (hls / "segment_2.ts.tmp").rename(hls / "segment_2.ts")  # FFmpeg finishing a segment
    assert counter.count(hls) == 3
    (hls / "segment_0.ts").unlink()
    assert counter.count(hls) == 2


def test_recounts_after_max_age_even_if_the_mtime_did_not_move(tmp_path: Path) -> None:
    import os

    counter = SegmentCounter(max_age=0.0)
    (tmp_path / "segment_0.ts").write_bytes(b"x")
    stat = tmp_path.stat()
    assert counter.count(tmp_path) == 1
    (tmp_path / "segment_1.ts").write_bytes(b"x")
    os.utime(tmp_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a too-coarse clock: same mtime
    assert counter.count(tmp_path) == 2
