"""hls.playlist: rendering, blocking-reload rules and the invariant checker (design §3.6, §3.8)."""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.hls.helpers import split

from streamplat.hls.cutter import Cutter, Part, Segment
from streamplat.hls.playlist import (
    DirectiveError,
    Directives,
    check_directives,
    check_playlist,
    have,
    parse_directives,
    render_live,
)
from streamplat.hls.store import LiveStream


def seg(msn: int, run: int, dsn: int, parts: int = 5, first_part: int = 0, closed: bool = True) -> Segment:
    segment = Segment(msn=msn, run=run, dsn=dsn, media_start=0.0, pdt=1_795_000_000.0 + msn, timescale=90000)
    for i in range(parts):
        segment.parts.append(Part(run, first_part + i, msn, i, 0.2, i == 0, b"", 0.0))
        segment.duration_ticks += 18000
    segment.closed = closed
    return segment


def design_example() -> tuple[list[Segment], Segment]:
    """The state of design §3.8: runs 2 and 3 in the window, segment 42 open with 2 parts."""
    window = [seg(37, 2, 1), seg(38, 2, 1, parts=4), seg(39, 3, 2, first_part=0)]
    window += [seg(40, 3, 2, first_part=5), seg(41, 3, 2, first_part=10)]
    return window, seg(42, 3, 2, parts=2, first_part=15, closed=False)


def test_the_design_example() -> None:
    window, open_segment = design_example()
    text = render_live(
        window, open_segment, target_duration=1, part_target=0.2, hint="part_3_17.m4s", ended=False
    ).decode()
    lines = text.splitlines()
    assert lines[:7] == [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600",
        "#EXT-X-PART-INF:PART-TARGET=0.200",
        "#EXT-X-MEDIA-SEQUENCE:37",
        "#EXT-X-DISCONTINUITY-SEQUENCE:1",
    ]
    assert lines[7] == '#EXT-X-MAP:URI="init_2.mp4"'
    at = lines.index("seg_2_38.m4s")
    assert lines[at + 1 : at + 3] == ["#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="init_3.mp4"']
    assert "#EXTINF:0.80000," in lines
    # parts for the segments ending within 3 x TD of the end, plus the open one
    assert not any("part_2_" in line for line in lines)
    assert '#EXT-X-PART:DURATION=0.20000,URI="part_3_0.m4s",INDEPENDENT=YES' in lines
    assert '#EXT-X-PART:DURATION=0.20000,URI="part_3_16.m4s"' in lines
    assert lines[-1] == '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part_3_17.m4s"'
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == 6
    facts = check_playlist(text)
    assert facts.media_sequence == 37 and facts.discontinuity_sequence == 1 and facts.segments == 5


def test_ended_playlist_drops_parts_and_hint() -> None:
    window, _ = design_example()
    text = render_live(window, None, target_duration=1, part_target=0.2, hint="x", ended=True).decode()
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "PART" not in text and "PRELOAD-HINT" not in text and "SERVER-CONTROL" not in text
    check_playlist(text)


def test_low_latency_off_is_a_plain_live_playlist() -> None:
    window, open_segment = design_example()
    text = render_live(
        window, open_segment, target_duration=1, part_target=0.2, hint="h", ended=False, low_latency=False
    ).decode()
    assert "#EXT-X-PART" not in text and "PRELOAD" not in text and "ENDLIST" not in text


def test_checker_catches_broken_playlists() -> None:
    window, open_segment = design_example()
    good = render_live(
        window, open_segment, target_duration=1, part_target=0.2, hint=None, ended=False
    ).decode()
    facts = check_playlist(good)
    with pytest.raises(AssertionError, match="PART-TARGET"):
        check_playlist(good.replace("PART-TARGET=0.200", "PART-TARGET=0.150"))
    with pytest.raises(AssertionError, match="TARGETDURATION changed"):
        check_playlist(good.replace("TARGETDURATION:1", "TARGETDURATION:2"), facts)
    with pytest.raises(AssertionError, match="went back"):
        check_playlist(good.replace("MEDIA-SEQUENCE:37", "MEDIA-SEQUENCE:30"), facts)
    with pytest.raises(AssertionError, match="rounds above"):
        check_playlist(good.replace("#EXTINF:1.00000,", "#EXTINF:1.60000,"))
    with pytest.raises(AssertionError, match="after a PART"):
        check_playlist(
            good.replace("#EXTINF:1.00000,\nseg_3_41", '#EXT-X-MAP:URI="x"\n#EXTINF:1.00000,\nseg_3_41')
        )
    with pytest.raises(AssertionError, match="85 %"):
        check_playlist(
            good.replace('DURATION=0.20000,URI="part_3_6.m4s"', 'DURATION=0.10000,URI="part_3_6.m4s"')
        )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", Directives(None, None)),
        ("_HLS_msn=5", Directives(5, None)),
        ("_HLS_msn=5&_HLS_part=2&x=1", Directives(5, 2)),
        ("_HLS_skip=YES&_HLS_msn=0", Directives(0, None)),
    ],
)
def test_parse_directives(query: str, expected: Directives) -> None:
    assert parse_directives(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        "_HLS_part=1",
        "_HLS_msn=abc",
        "_HLS_msn=-1",
        "_HLS_msn=",
        "_HLS_msn=1&_HLS_part=1.5",
        "_HLS_msn=99999999999",
        "_HLS_msn=1&_HLS_msn=2",
        "_HLS_msn=%31",
    ],
)
def test_bad_directives_are_400(query: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directives(query)


def test_have_rolls_past_the_last_part_into_the_next_segment() -> None:
    window, open_segment = design_example()
    assert have(window, open_segment, 41, None)
    assert not have(window, open_segment, 42, None)
    assert have(window, open_segment, 41, 4)
    assert have(window, open_segment, 41, 5)  # = part 0 of 42, which exists
    assert have(window, open_segment, 42, 1)
    assert not have(window, open_segment, 42, 2)
    assert not have(window, open_segment, 43, 0)
    assert have(window, open_segment, 3, 0)  # older than the window: at once
    assert not have([], None, 0, None)


def test_too_far_ahead() -> None:
    window, open_segment = design_example()
    ok = dict(target_duration=1, part_target=0.2)
    check_directives(window, open_segment, Directives(43, None), **ok)
    with pytest.raises(DirectiveError, match="more than 2 segments"):
        check_directives(window, open_segment, Directives(44, None), **ok)
    check_directives(window, open_segment, Directives(42, 17), **ok)  # 15 parts ahead: the limit
    with pytest.raises(DirectiveError, match="parts ahead"):
        check_directives(window, open_segment, Directives(42, 18), **ok)
    with pytest.raises(DirectiveError, match="parts ahead"):
        check_directives(window, open_segment, Directives(43, 14), **ok)
    check_directives(window, open_segment, Directives(1, 99), **ok)  # old: answered at once


async def test_store_wakes_a_held_request_when_the_part_appears(fmp4_av: bytes) -> None:
    ftyp, moov, pairs = split(fmp4_av)
    live = LiveStream("s", Cutter(), playlist_size=3, memory_segments=3)
    live.start_run(ftyp, moov)
    for pair in pairs[:6]:
        live.add_fragment(*pair)
    assert live.playlist is not None  # segment 0 closed at the 6th fragment
    facts = check_playlist(live.playlist.body.decode())
    assert live.is_hinted(1, 6) and not live.is_hinted(1, 7)
    waiter = asyncio.create_task(live.wait(lambda: have(live.window(), live.cutter.open, 1, 1), 5.0))
    other = asyncio.create_task(live.wait(lambda: False, 0.05))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await other is False  # a timed-out waiter does not cancel the shared future
    live.add_fragment(*pairs[6])
    assert await waiter is True
    assert live.part(1, 6) is not None
    for pair in pairs[7:]:
        live.add_fragment(*pair)
        facts = check_playlist(live.playlist.body.decode(), facts)
    live.finish()
    text = live.playlist.body.decode()
    assert text.endswith("#EXT-X-ENDLIST\n")
    check_playlist(text, facts)
    info = live.info()
    assert info["target_duration"] == 1 and info["codecs"].startswith("avc1.")
    assert [s["msn"] for s in info["segments"]] == [0, 1]
