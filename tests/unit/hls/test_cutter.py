"""hls.cutter: fragments -> parts, segments and runs (design §3.4, §5 "cutter")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.unit.hls.conftest import make_fmp4
from tests.unit.hls.helpers import split

from streamplat.hls.cutter import Cutter, CutterError, Segment, ceil_ms
from streamplat.hls.playlist import check_playlist, render_live


def run_all(cutter: Cutter, data: bytes, start: float = 1000.0) -> list[Segment]:
    ftyp, moov, pairs = split(data)
    cutter.start_run(ftyp, moov)
    closed = []
    for i, (moof, mdat) in enumerate(pairs):
        cut = cutter.add_fragment(moof, mdat, start + 0.2 * i)
        if cut.closed is not None:
            closed.append(cut.closed)
    last = cutter.end_run()
    if last is not None:
        closed.append(last)
    return closed


def test_segments_start_independent_and_extinf_is_the_sum_of_parts(fmp4_av: bytes) -> None:
    cutter = Cutter(segment_seconds=1.0)
    segments = run_all(cutter, fmp4_av)
    assert [s.msn for s in segments] == [0, 1]
    for segment in segments:
        assert segment.independent
        assert segment.duration == pytest.approx(sum(p.duration for p in segment.parts))
        assert segment.data == b"".join(p.data for p in segment.parts)
        assert [p.index for p in segment.parts] == list(range(len(segment.parts)))
    assert segments[0].duration == pytest.approx(1.0, abs=0.01)
    assert segments[1].media_start == pytest.approx(segments[0].duration)
    assert cutter.target_duration == 1
    assert cutter.part_target == pytest.approx(0.2, abs=0.002)
    # part numbers run across the run's segments (the PRELOAD-HINT is always the next one)
    numbers = [p.number for s in segments for p in s.parts]
    assert numbers == list(range(len(numbers)))
    assert cutter.next_part == len(numbers)
    # PDT is anchored once per run: segment starts keep their media spacing
    assert segments[1].pdt - segments[0].pdt == pytest.approx(segments[0].duration)


def test_short_last_part_before_keyframe_with_a_long_gop(fmp4_gop45: bytes) -> None:
    cutter = Cutter(segment_seconds=1.0)
    segments = run_all(cutter, fmp4_gop45)
    first = segments[0]
    assert first.duration == pytest.approx(1.5, abs=0.01)
    assert first.parts[-1].duration == pytest.approx(0.1, abs=0.01)
    assert cutter.target_duration == 2  # round(1.5) = 2: TD follows the keyframe interval
    assert all(s.independent for s in segments)


def test_forced_cut_keeps_extinf_within_target_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_fmp4(tmp_path / "g90.mp4", seconds=4.0, gop=90)  # 3 s GOP
    cutter = Cutter(segment_seconds=1.0, target_duration=1)  # TD fixed by an earlier run
    with caplog.at_level(logging.WARNING):
        segments = run_all(cutter, data)
    assert all(round(s.duration) <= 1 for s in segments)
    assert any(s.forced for s in segments)
    assert "keyframe interval longer than TARGETDURATION" in caplog.text


def test_leading_fragments_without_a_keyframe_are_dropped(fmp4_av: bytes) -> None:
    ftyp, moov, pairs = split(fmp4_av)
    cutter = Cutter()
    cutter.start_run(ftyp, moov)
    assert cutter.add_fragment(*pairs[1], 0.0).part is None  # starts mid-GOP
    cut = cutter.add_fragment(*pairs[5], 0.0)  # the second keyframe fragment
    assert cut.part is not None and cut.part.independent and cut.part.number == 0


def test_a_new_run_continues_msn_and_adds_a_discontinuity(fmp4_av: bytes, fmp4_gop45: bytes) -> None:
    cutter = Cutter()
    first = run_all(cutter, fmp4_av)
    second = run_all(cutter, fmp4_gop45)
    assert {s.run for s in first} == {1} and {s.run for s in second} == {2}
    assert second[0].msn == first[-1].msn + 1
    assert {s.dsn for s in first} == {0} and {s.dsn for s in second} == {1}
    assert second[0].parts[0].number == 0
    # TD was fixed by the first segment ever and does not follow the second run's GOP
    assert cutter.target_duration == 1
    assert all(round(s.duration) <= 1 for s in second)


def test_continuing_after_a_restart(fmp4_av: bytes) -> None:
    cutter = Cutter(next_run=4, next_msn=17, next_dsn=2, target_duration=1, had_segments=True)
    segments = run_all(cutter, fmp4_av)
    assert segments[0].run == 4 and segments[0].msn == 17 and segments[0].dsn == 3


def test_audio_only_and_video_only(fmp4_audio: bytes, fmp4_video: bytes) -> None:
    cutter = Cutter()
    segments = run_all(cutter, fmp4_audio)
    assert cutter.init is None
    assert sum(s.duration for s in segments) == pytest.approx(2.0, abs=0.05)
    assert all(p.independent for s in segments for p in s.parts)
    cutter = Cutter()
    ftyp, moov, _ = split(fmp4_audio)
    assert cutter.start_run(ftyp, moov).content_type == "audio/mp4"
    segments = run_all(Cutter(), fmp4_video)
    assert len(segments) == 2


def test_misuse_is_an_error(fmp4_av: bytes) -> None:
    ftyp, moov, pairs = split(fmp4_av)
    cutter = Cutter()
    with pytest.raises(CutterError):
        cutter.add_fragment(*pairs[0], 0.0)
    with pytest.raises(CutterError):
        cutter.start_run(ftyp, pairs[0][0])
    cutter.start_run(ftyp, moov)
    cutter.add_fragment(*pairs[0], 0.0)
    with pytest.raises(CutterError):
        cutter.start_run(ftyp, moov)


def test_ceil_ms() -> None:
    assert ceil_ms(0.2) == 0.2
    assert ceil_ms(0.2002) == 0.201
    assert ceil_ms(0.208333) == 0.209


# --- rule 8: a run's early first segment ------------------------------------------------------


def early(**kw: float) -> Cutter:
    return Cutter(first_segment_seconds=0.2, part_seconds=0.2, **kw)  # the shipped defaults


def test_early_first_segment_is_one_part_and_fixes_td_and_part_target(fmp4_av: bytes) -> None:
    cutter = early(segment_seconds=1.0)
    ftyp, moov, pairs = split(fmp4_av)
    cutter.start_run(ftyp, moov)
    cuts = [cutter.add_fragment(moof, mdat, 1000.0 + 0.2 * i) for i, (moof, mdat) in enumerate(pairs)]
    first = next(c.closed for c in cuts if c.closed is not None)
    # closed with the first fragment: the stream is playable as soon as there is a part
    assert cuts[0].closed is first and first.msn == 0 and cuts[0].part is first.parts[0]
    assert [p.number for p in first.parts] == [0] and first.independent and first.closed
    assert first.duration == pytest.approx(0.2, abs=0.002)
    # TD is round(segment_seconds), not round(0.2); PART-TARGET is already the part length
    assert cutter.target_duration == 1
    assert cutter.part_target == pytest.approx(0.2, abs=0.001)
    segments = [c.closed for c in cuts if c.closed is not None]
    last = cutter.end_run()
    assert last is not None
    segments.append(last)
    # the rest of the first GOP closes at the next keyframe; from then on whole GOPs
    assert [s.msn for s in segments] == [0, 1, 2]
    assert segments[1].duration == pytest.approx(0.8, abs=0.01) and not segments[1].independent
    assert segments[2].independent and segments[2].duration == pytest.approx(1.0, abs=0.01)
    assert segments[1].media_start == pytest.approx(first.duration)
    assert sum(s.duration for s in segments) == pytest.approx(2.0, abs=0.05)
    numbers = [p.number for s in segments for p in s.parts]
    assert numbers == list(range(len(pairs)))
    assert cutter.part_target == pytest.approx(0.2, abs=0.001)  # did not grow afterwards


def test_early_first_segment_keeps_td_at_the_segment_length(fmp4_av: bytes, fmp4_gop45: bytes) -> None:
    # a longer segment target: the 0.2 s first segment must not shrink TD to 1
    cutter = early(segment_seconds=2.0)
    segments = run_all(cutter, fmp4_av)
    assert segments[0].duration == pytest.approx(0.2, abs=0.002)
    assert cutter.target_duration == 2
    # a GOP (1.5 s) longer than the segment target: TD no longer follows it (it would be 2
    # without rule 8); segments are cut so that EXTINF never rounds above TD
    cutter = early(segment_seconds=1.0)
    segments = run_all(cutter, fmp4_gop45)
    assert cutter.target_duration == 1
    assert all(round(s.duration) <= 1 for s in segments)
    assert sum(s.duration for s in segments) == pytest.approx(3.0, abs=0.05)


def test_every_run_gets_an_early_first_segment(fmp4_av: bytes) -> None:
    cutter = early()
    first = run_all(cutter, fmp4_av)
    second = run_all(cutter, fmp4_av)
    assert [len(s.parts) for s in (first[0], second[0])] == [1, 1]
    assert second[0].msn == first[-1].msn + 1
    assert {s.dsn for s in first} == {0} and {s.dsn for s in second} == {1}


def test_early_first_segment_playlists_pass_the_checker(fmp4_av: bytes) -> None:
    cutter = early()
    ftyp, moov, pairs = split(fmp4_av)
    cutter.start_run(ftyp, moov)
    closed: list[Segment] = []
    facts = None
    for i, (moof, mdat) in enumerate(pairs):
        cut = cutter.add_fragment(moof, mdat, 1000.0 + 0.2 * i)
        if cut.closed is not None:
            closed.append(cut.closed)
        if closed:
            assert cutter.target_duration is not None
            text = render_live(
                closed,
                cutter.open,
                target_duration=cutter.target_duration,
                part_target=cutter.part_target,
                hint=f"part_1_{cutter.next_part}.m4s",
                ended=False,
            ).decode()
            facts = check_playlist(text, facts)
    assert facts is not None and facts.segments == len(closed) >= 2
    assert facts.part_target == pytest.approx(0.2) and facts.target_duration == 1
    # the legacy playlist (ingest.low_latency = false) of the same window: segments only
    assert cutter.target_duration is not None
    legacy = render_live(
        closed[:1],
        None,
        target_duration=cutter.target_duration,
        part_target=0.2,
        hint=None,
        ended=False,
        low_latency=False,
    ).decode()
    assert check_playlist(legacy).segments == 1 and "#EXT-X-PART" not in legacy
    assert "#EXTINF:0.20000," in legacy.splitlines()


def test_first_segment_seconds_is_checked() -> None:
    with pytest.raises(ValueError, match="first_segment_seconds"):
        Cutter(segment_seconds=1.0, first_segment_seconds=1.5)
    with pytest.raises(ValueError, match="first_segment_seconds"):
        Cutter(first_segment_seconds=-0.2)
