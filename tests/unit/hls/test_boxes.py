"""hls.boxes on fMP4 bytes made by the bundled FFmpeg (design §5, "boxes")."""

from __future__ import annotations

import random
import struct

import pytest
from tests.unit.hls.helpers import split

from streamplat.hls.boxes import BoxError, BoxSplitter, iter_boxes, parse_moof, parse_moov


def split_all(data: bytes, sizes: list[int] | None = None) -> list[tuple[bytes, bytes]]:
    splitter = BoxSplitter()
    out: list[tuple[bytes, bytes]] = []
    if sizes is None:
        out += splitter.feed(data)
    else:
        pos = 0
        for size in sizes:
            out += splitter.feed(data[pos : pos + size])
            pos += size
        out += splitter.feed(data[pos:])
    assert splitter.pending == 0
    return out


def test_splitter_gives_the_same_boxes_for_any_chunking(fmp4_av: bytes) -> None:
    whole = split_all(fmp4_av)
    kinds = [kind for kind, _ in whole]
    assert kinds[:4] == [b"ftyp", b"moov", b"moof", b"mdat"]
    assert b"".join(box for _, box in whole) == fmp4_av
    assert split_all(fmp4_av, [1] * 5000) == whole
    rng = random.Random(7)
    assert split_all(fmp4_av, [rng.randint(1, 3000) for _ in range(200)]) == whole


def test_splitter_holds_back_a_truncated_tail(fmp4_av: bytes) -> None:
    splitter = BoxSplitter()
    first = splitter.feed(fmp4_av[:-10])
    assert splitter.pending > 0
    assert b"".join(box for _, box in first) == fmp4_av[: len(fmp4_av) - 10 - splitter.pending]
    rest = splitter.feed(fmp4_av[-10:])
    assert splitter.pending == 0
    assert b"".join(box for _, box in first + rest) == fmp4_av


def test_splitter_reads_largesize_boxes() -> None:
    payload = b"x" * 20
    large = struct.pack(">I4sQ", 1, b"free", 16 + len(payload)) + payload
    small = struct.pack(">I4s", 8, b"skip")
    splitter = BoxSplitter()
    assert splitter.feed(large[:9]) == []
    assert splitter.feed(large[9:] + small) == [(b"free", large), (b"skip", small)]


@pytest.mark.parametrize("size", [0, 3, 7])
def test_splitter_rejects_sizes_it_cannot_read(size: int) -> None:
    with pytest.raises(BoxError):
        BoxSplitter().feed(struct.pack(">I4s", size, b"mdat") + b"\0" * 16)


def test_splitter_refuses_a_huge_box() -> None:
    with pytest.raises(BoxError, match="larger than"):
        BoxSplitter(max_box_size=1000).feed(struct.pack(">I4s", 5000, b"mdat"))


def test_iter_boxes_rejects_a_box_running_past_its_parent() -> None:
    data = struct.pack(">I4s", 100, b"free") + b"\0" * 10
    with pytest.raises(BoxError):
        list(iter_boxes(data))


def test_moov_gives_tracks_timescales_and_codecs(fmp4_av: bytes) -> None:
    _, moov, _ = split(fmp4_av)
    tracks = parse_moov(moov)
    assert [t.kind for t in tracks] == ["video", "audio"]
    video, audio = tracks
    assert video.timescale == 90000 or video.timescale > 0
    assert audio.timescale == 48000
    assert video.codec.startswith("avc1.")
    assert len(video.codec) == len("avc1.") + 6
    # The regression test for design §2.5: with delay_moov the esds carries the AudioSpecificConfig.
    assert audio.codec == "mp4a.40.2"


def test_moof_durations_add_up_to_the_next_decode_time(fmp4_av: bytes) -> None:
    _, moov, pairs = split(fmp4_av)
    tracks = parse_moov(moov)
    assert len(pairs) >= 8
    previous: dict[int, tuple[int, int]] = {}
    total = {t.track_id: 0 for t in tracks}
    for moof, mdat in pairs:
        timings = parse_moof(moof, tracks)
        assert {t.track_id for t in timings} == {t.track_id for t in tracks}
        for timing in timings:
            if timing.track_id in previous:
                start, duration = previous[timing.track_id]
                assert start + duration == timing.base_decode_time
            previous[timing.track_id] = (timing.base_decode_time, timing.duration)
            total[timing.track_id] += timing.duration
            assert timing.sample_count > 0
        assert sum(t.size for t in timings) == len(mdat) - 8
    video = tracks[0]
    # 2 s of 30 fps video, every frame accounted for.
    assert total[video.track_id] / video.timescale == pytest.approx(2.0, abs=0.04)


def test_keyframes_start_fragments_and_audio_is_all_sync(fmp4_av: bytes) -> None:
    _, moov, pairs = split(fmp4_av)
    tracks = parse_moov(moov)
    video_id, audio_id = tracks[0].track_id, tracks[1].track_id
    firsts = []
    for moof, _ in pairs:
        by_id = {t.track_id: t for t in parse_moof(moof, tracks)}
        firsts.append(by_id[video_id].first_sync)
        # frag_keyframe: a keyframe never falls inside a fragment.
        assert by_id[video_id].any_sync == by_id[video_id].first_sync
        assert by_id[audio_id].first_sync
    assert firsts[0]
    # 1 s GOP, 0.2 s fragments: a keyframe fragment every 5.
    assert sum(firsts) == 2


def test_gop_not_a_multiple_of_the_fragment_gives_a_short_fragment(fmp4_gop45: bytes) -> None:
    _, moov, pairs = split(fmp4_gop45)
    tracks = parse_moov(moov)
    video = tracks[0]
    frames = [next(t for t in parse_moof(m, tracks) if t.track_id == video.track_id) for m, _ in pairs]
    counts = [t.sample_count for t in frames]
    assert counts[:8] == [6, 6, 6, 6, 6, 6, 6, 3]
    assert frames[8].first_sync


def test_audio_only_and_video_only(fmp4_audio: bytes, fmp4_video: bytes) -> None:
    _, moov, pairs = split(fmp4_audio)
    assert [t.kind for t in parse_moov(moov)] == ["audio"]
    assert all(parse_moof(m, parse_moov(moov))[0].first_sync for m, _ in pairs)
    _, moov, pairs = split(fmp4_video)
    assert [t.kind for t in parse_moov(moov)] == ["video"]
    assert pairs


def test_tfdt_version_1_and_version_0_are_read(fmp4_av: bytes) -> None:
    """FFmpeg 9 writes 64-bit (v1) tfdt; v0 (32-bit, wraps after 13 h at 90 kHz) must work too."""
    _, moov, pairs = split(fmp4_av)
    tracks = parse_moov(moov)
    moof = pairs[3][0]
    expected = parse_moof(moof, tracks)
    assert moof[moof.find(b"tfdt") + 4] == 1
    assert all(t.base_decode_time > 0 for t in expected)
    big = bytearray(moof)
    pos = 0
    while (pos := big.find(b"tfdt", pos)) != -1:
        value = struct.unpack_from(">Q", big, pos + 8)[0]
        struct.pack_into(">Q", big, pos + 8, value + (1 << 33))
        pos += 16
    got = parse_moof(bytes(big), tracks)
    assert [t.base_decode_time for t in got] == [t.base_decode_time + (1 << 33) for t in expected]
    small = parse_moof(_tfdt_to_v0(moof), tracks)
    assert [t.base_decode_time for t in small] == [t.base_decode_time for t in expected]
    assert [t.duration for t in small] == [t.duration for t in expected]


def test_a_traf_without_default_base_is_moof_is_rejected(fmp4_av: bytes) -> None:
    _, moov, pairs = split(fmp4_av)
    tracks = parse_moov(moov)
    moof = bytearray(pairs[1][0])
    pos = moof.find(b"tfhd")
    flags = struct.unpack_from(">I", moof, pos + 4)[0]
    struct.pack_into(">I", moof, pos + 4, flags & ~0x020000)
    with pytest.raises(BoxError, match="default-base-is-moof"):
        parse_moof(bytes(moof), tracks)


def test_truncated_moof_is_an_error_not_a_crash(fmp4_av: bytes) -> None:
    _, moov, pairs = split(fmp4_av)
    tracks = parse_moov(moov)
    moof = bytearray(pairs[1][0][:60])
    struct.pack_into(">I", moof, 0, len(moof))
    with pytest.raises(BoxError):
        parse_moof(bytes(moof), tracks)
    with pytest.raises(BoxError):
        parse_moov(moof)


def _tfdt_to_v0(moof: bytes) -> bytes:
    """Rewrite every version-1 tfdt as version 0 (32-bit), fixing the traf and moof sizes."""
    out = bytearray(moof)
    pos = 0
    while (pos := out.find(b"tfdt", pos)) != -1:
        start = pos - 4
        assert out[pos + 4] == 1
        value = struct.unpack_from(">Q", out, pos + 8)[0]
        out[start : start + 20] = struct.pack(">I4sII", 16, b"tfdt", 0, value)
        traf = out.rfind(b"traf", 0, start) - 4
        for at in (0, traf):
            struct.pack_into(">I", out, at, struct.unpack_from(">I", out, at)[0] - 4)
        pos += 16
    # trun data offsets (relative to the moof) are now off by 4 per tfdt; parse_moof ignores them.
    return bytes(out)
