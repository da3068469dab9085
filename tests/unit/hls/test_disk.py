"""hls.disk: durable ordered writes and reading a stream's directory back (design §3.9)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.hls.helpers import split

from streamplat.hls.cutter import Cutter
from streamplat.hls.disk import DiskWriter, finalise_index, scan, segment_duration


def record(directory: Path, data: bytes, cutter: Cutter, writer: DiskWriter) -> list[tuple[int, int, float]]:
    ftyp, moov, pairs = split(data)
    init = cutter.start_run(ftyp, moov)
    writer.write_init(init.run, init.data)
    done = []
    closed = [cutter.add_fragment(m, d, 0.0).closed for m, d in pairs] + [cutter.end_run()]
    for segment in closed:
        if segment is not None:
            assert cutter.target_duration is not None
            writer.write_segment(
                segment.run, segment.msn, segment.data, segment.duration, cutter.target_duration
            )
            done.append((segment.run, segment.msn, segment.duration))
    return done


def test_write_scan_and_continue(tmp_path: Path, fmp4_av: bytes, fmp4_gop45: bytes) -> None:
    state = scan(tmp_path)
    assert state.next_run == 1 and state.next_msn == 0 and not state.has_media
    writer = DiskWriter(tmp_path, state)
    cutter = Cutter()
    first = record(tmp_path, fmp4_av, cutter, writer)
    second = record(tmp_path, fmp4_gop45, cutter, writer)
    writer.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "init_1.mp4" in names and "init_2.mp4" in names and "seg_2_2.m4s" in names
    assert not [n for n in names if n.endswith(".tmp")]
    index = (tmp_path / "stream.m3u8").read_text()
    assert index.count("#EXT-X-DISCONTINUITY\n") == 1 and "#EXT-X-ENDLIST" not in index
    # a segment file is byte-contiguous after its run's init and reads back its duration
    run, msn, duration = second[0]
    init = (tmp_path / f"init_{run}.mp4").read_bytes()
    assert segment_duration(init, (tmp_path / f"seg_{run}_{msn}.m4s").read_bytes()) == pytest.approx(duration)

    # A crash: a leftover tmp, and a segment written after the last index update.
    (tmp_path / ".seg_2_9.m4s.tmp").write_bytes(b"half")
    (tmp_path / "stream.m3u8").write_text(index.rsplit("#EXTINF", 1)[0])
    state = scan(tmp_path)
    assert not (tmp_path / ".seg_2_9.m4s.tmp").exists()
    assert [(e.run, e.msn) for e in state.entries] == [(r, m) for r, m, _ in first + second]
    assert state.entries[-1].duration == pytest.approx(second[-1][2])
    assert state.next_run == 3 and state.next_msn == len(first) + len(second) and state.next_dsn == 1
    assert state.target_duration == 1

    assert finalise_index(tmp_path)
    assert (tmp_path / "stream.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    assert not finalise_index(tmp_path / "nothing")
