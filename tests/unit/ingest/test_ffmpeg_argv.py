"""Pure ingest helpers: the listener argv, -progress parsing and playlist edits (no FFmpeg)."""

from __future__ import annotations

import urllib.parse

import pytest

from streamplat.ingest.ffmpeg import (
    ENDLIST_TAG,
    ProgressAccumulator,
    RateWindow,
    build_listener_argv,
    clean_stderr_line,
    describe_exit,
    listener_input_list,
    mask_secret,
    parse_playlist,
    parse_progress_block,
    plan_salvage,
    playlist_with_segments,
    segment_name,
    segment_number,
    ts_duration_seconds,
    with_endlist,
)

KEY = "s3cret-passphrase-42"

# Captured from FFmpeg 9.0.2 remuxing an SRT publisher into HLS (-progress pipe:1).
REAL_PROGRESS_BLOCK = """\
frame=33
fps=0.00
stream_0_0_q=-1.0
bitrate=N/A
total_size=N/A
out_time_us=1123222
out_time_ms=1123222
out_time=00:00:01.123222
dup_frames=0
drop_frames=0
speed=2.25x
progress=continue
"""

# Written by FFmpeg 9.0.2 (append_list) after a publisher reconnected.
REAL_PLAYLIST = """\
#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:1
#EXT-X-MEDIA-SEQUENCE:7
#EXTINF:1.000000,
segment_00007.ts
#EXTINF:0.433333,
segment_00008.ts
#EXT-X-DISCONTINUITY
#EXTINF:1.000000,
segment_00009.ts
#EXTINF:1.000000,
segment_00010.ts
"""


@pytest.fixture(name="argv")
def fixture_argv() -> list[str]:
    return build_listener_argv(
        ffmpeg_binary="/usr/bin/ffmpeg",
        input_list="/run/private/abc.ffconcat",
        port=10001,
        playlist_dir="/data/hls/abc",
        segment_seconds=2.0,
        playlist_size=6,
    )


def _value(argv: list[str], flag: str, after: str | None = None) -> str:
    start = argv.index(after) + 1 if after else 0
    return argv[argv.index(flag, start) + 1]


def _listed_url(listing: str) -> str:
    lines = listing.splitlines()
    assert lines[0] == "ffconcat version 1.0"
    (entry,) = [line for line in lines if line.startswith("file ")]
    assert entry.startswith("file '") and entry.endswith("'")
    return entry[len("file '") : -1]


def test_argv_remuxes_every_stream_without_transcoding(argv: list[str]) -> None:
    assert argv[0] == "/usr/bin/ffmpeg"
    assert _value(argv, "-map") == "0"
    assert _value(argv, "-c") == "copy"
    assert not any(arg.startswith(("-c:v", "-c:a", "-vcodec", "-acodec")) for arg in argv)
    # -probesize 32 silently drops the AAC track; the fast start comes from -analyzeduration.
    assert "-probesize" not in argv
    assert _value(argv, "-analyzeduration") == "500000"


def test_argv_reads_its_input_from_the_private_list_and_never_holds_the_key(argv: list[str]) -> None:
    assert _value(argv, "-f") == "concat" and _value(argv, "-i") == "/run/private/abc.ffconcat"
    assert argv.index("-f") < argv.index("-i")
    assert _value(argv, "-protocol_whitelist") == "file,srt"
    assert KEY not in " ".join(argv) and "srt://" not in " ".join(argv)


def test_input_list_listens_on_the_port_with_the_passphrase() -> None:
    listing = listener_input_list("0.0.0.0", 10001, KEY, latency_ms=120, publisher_timeout_seconds=3.0)
    url = urllib.parse.urlsplit(_listed_url(listing))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert (url.scheme, url.hostname, url.port) == ("srt", "0.0.0.0", 10001)
    assert query["mode"] == "listener"
    assert query["passphrase"] == KEY
    assert query["latency"] == "120000"  # FFmpeg's libsrt wants microseconds
    assert query["timeout"] == "3000000"
    assert "option analyzeduration 500000" in listing.splitlines()


def test_input_list_quotes_a_passphrase_with_url_and_quote_characters() -> None:
    key = "a&b=c%d e+f/g?h#i'j"
    listing = listener_input_list("::", 5000, key, latency_ms=120, publisher_timeout_seconds=3)
    url = urllib.parse.urlsplit(_listed_url(listing))
    assert url.netloc == "[::]:5000"
    assert dict(urllib.parse.parse_qsl(url.query))["passphrase"] == key


def test_argv_writes_a_live_hls_playlist_that_keeps_every_segment(argv: list[str]) -> None:
    assert _value(argv, "-f", after="-i") == "hls"
    assert _value(argv, "-hls_time") == "2"
    assert _value(argv, "-hls_list_size") == "6"
    flags = _value(argv, "-hls_flags").split("+")
    assert {"omit_endlist", "temp_file"} <= set(flags)
    assert "delete_segments" not in flags
    # append_list only when continuing: on a new playlist it adds a needless DISCONTINUITY.
    assert "append_list" not in flags
    assert _value(argv, "-hls_segment_filename") == "/data/hls/abc/segment_%05d.ts"
    assert argv[-1] == "/data/hls/abc/stream.m3u8"
    assert _value(argv, "-progress") == "pipe:1"
    assert "-nostdin" in argv


def test_argv_continues_an_existing_playlist() -> None:
    argv = build_listener_argv(
        ffmpeg_binary="ffmpeg",
        input_list="/tmp/x.ffconcat",
        port=10001,
        playlist_dir="/tmp/x",
        segment_seconds=2,
        playlist_size=6,
        continue_playlist=True,
    )
    assert "append_list" in _value(argv, "-hls_flags").split("+")


@pytest.mark.parametrize("passphrase", ["short", "x" * 65])
def test_input_list_refuses_a_passphrase_srt_would_reject(passphrase: str) -> None:
    with pytest.raises(ValueError, match="10-64"):
        listener_input_list("0.0.0.0", 10001, passphrase, latency_ms=120, publisher_timeout_seconds=3)


def test_logged_text_hides_the_passphrase() -> None:
    url = _listed_url(listener_input_list("0.0.0.0", 1, KEY, latency_ms=120, publisher_timeout_seconds=3))
    masked = " ".join(mask_secret(["ffmpeg", "-i", url], KEY))
    assert KEY not in masked
    assert "passphrase=********" in masked


def test_progress_block_from_ffmpeg_is_parsed() -> None:
    progress = parse_progress_block(REAL_PROGRESS_BLOCK)
    assert progress.frame == 33
    assert progress.fps == 0.0
    assert progress.bitrate_kbps is None  # N/A for the HLS muxer
    assert progress.total_size is None
    assert progress.out_time_seconds == pytest.approx(1.123222)
    assert progress.speed == pytest.approx(2.25)
    assert not progress.ended
    assert progress.has_media


def test_progress_accumulator_yields_one_block_per_progress_line() -> None:
    accumulator = ProgressAccumulator()
    text = REAL_PROGRESS_BLOCK + REAL_PROGRESS_BLOCK.replace("frame=33", "frame=48").replace(
        "progress=continue", "progress=end"
    ).replace("bitrate=N/A", "bitrate=2500.5kbits/s")
    blocks = [block for line in text.splitlines() if (block := accumulator.feed(line + "\n"))]
    assert [b.frame for b in blocks] == [33, 48]
    assert [b.ended for b in blocks] == [False, True]
    assert blocks[1].bitrate_kbps == pytest.approx(2500.5)


def test_empty_progress_block_is_not_media() -> None:
    assert not parse_progress_block("frame=0\nout_time_us=N/A\nprogress=end\n").has_media


def test_rate_window_measures_the_recent_rate() -> None:
    window = RateWindow(window_seconds=5)
    window.add(0.0, 0)
    assert window.rate() is None  # one sample says nothing about a rate
    window.add(0.5, 1000)  # the probe burst at connect time
    for second in range(1, 11):
        window.add(float(second), 1000 + 30 * second)
    assert window.rate() == pytest.approx(30.0)  # the burst has left the window


def test_exit_reason_names_code_and_last_stderr_lines() -> None:
    reason = describe_exit(158, ["", "first", "Error opening input: Address already in use"], max_lines=1)
    assert reason == "FFmpeg exited with code 158: Error opening input: Address already in use"
    assert describe_exit(-9, []) == "FFmpeg was killed by signal 9"


def test_stderr_line_shown_to_users_hides_passphrase_and_addresses() -> None:
    line = f"[in#0 @ 0x5640792f6d40] Error opening input file srt://0.0.0.0:1?mode=listener&passphrase={KEY}."
    cleaned = clean_stderr_line(line, KEY)
    assert KEY not in cleaned
    assert cleaned.startswith("[in#0] Error opening input file")


def test_playlist_from_ffmpeg_tells_the_next_segment_number() -> None:
    state = parse_playlist(REAL_PLAYLIST)
    assert state.media_sequence == 7
    assert state.segments == tuple(segment_name(n) for n in (7, 8, 9, 10))
    assert state.next_number == 11
    assert not state.ended


def test_endlist_is_appended_once() -> None:
    ended = with_endlist(REAL_PLAYLIST)
    assert ended.endswith(ENDLIST_TAG + "\n")
    assert with_endlist(ended) == ended
    assert parse_playlist(ended).ended


def test_salvage_lists_segments_a_killed_ffmpeg_left_behind() -> None:
    files = [f"segment_{n:05d}.ts" for n in range(11)] + ["segment_00011.ts", "segment_00012.ts.tmp"]
    plan = plan_salvage(REAL_PLAYLIST, [*files, "stream.m3u8", "stream.m3u8.tmp"])
    assert plan.renames == (("segment_00012.ts.tmp", "segment_00012.ts"),)
    assert plan.append == (11, 12)


def test_salvage_does_nothing_for_a_cleanly_stopped_listener() -> None:
    files = [f"segment_{n:05d}.ts" for n in range(11)]
    assert plan_salvage(REAL_PLAYLIST, files).append == ()


def test_salvage_without_playlist_starts_at_segment_zero() -> None:
    plan = plan_salvage(None, ["segment_00000.ts.tmp"])
    assert plan.append == (0,)
    text = playlist_with_segments(None, [(0, 0.8)], target_duration=2)
    assert parse_playlist(text).next_number == 1
    assert "#EXT-X-TARGETDURATION:2" in text


def test_salvaged_segments_go_before_a_continuing_stream() -> None:
    text = playlist_with_segments(with_endlist(REAL_PLAYLIST), [(11, 1.5)], target_duration=2)
    state = parse_playlist(text)
    assert not state.ended  # the listener continues after them
    assert state.next_number == 12
    assert text.endswith("#EXTINF:1.500000,\nsegment_00011.ts\n")


def test_segment_names_round_trip() -> None:
    assert segment_number(segment_name(42)) == 42
    assert segment_number("segment_00042.ts.tmp") is None
    assert segment_number("stream.m3u8") is None


def _pes_packet(pts: int, stream_id: int = 0xE0) -> bytes:
    """One 188-byte TS packet starting a PES with a PTS."""
    pts_bytes = bytes(
        [
            0x21 | ((pts >> 29) & 0x0E),
            (pts >> 22) & 0xFF,
            0x01 | ((pts >> 14) & 0xFE),
            (pts >> 7) & 0xFF,
            0x01 | ((pts << 1) & 0xFE),
        ]
    )
    header = bytes([0x47, 0x41, 0x00, 0x10])  # sync, payload_unit_start, PID 0x100, payload only
    pes = b"\x00\x00\x01" + bytes([stream_id, 0, 0, 0x80, 0x80, 5]) + pts_bytes
    return (header + pes).ljust(188, b"\xff")


def test_ts_duration_comes_from_first_and_last_timestamps() -> None:
    data = b"".join(_pes_packet(90_000 * 10 + 3000 * i) for i in range(46))  # 45 frames at 30 fps
    assert ts_duration_seconds(data) == pytest.approx(1.5)
    assert ts_duration_seconds(data + b"\x47\x00") == pytest.approx(1.5)  # truncated tail
    assert ts_duration_seconds(b"\xff" * 188) is None


def test_fmp4_argv_writes_fragmented_mp4_to_stdout() -> None:
    from streamplat.ingest import build_fmp4_argv

    argv = build_fmp4_argv(ffmpeg_binary="ffmpeg", input_list="/run/l.ffconcat", port=10001, part_seconds=0.2)
    assert argv[0] == "ffmpeg" and argv[-1] == "pipe:1"
    flags = argv[argv.index("-movflags") + 1].split("+")
    # delay_moov: the AAC esds gets its AudioSpecificConfig (hls.js needs the mp4a.40.2 codec)
    assert set(flags) == {"empty_moov", "default_base_moof", "frag_keyframe", "delay_moov"}
    assert argv[argv.index("-frag_duration") + 1] == "200000"
    assert argv[argv.index("-bsf:a") + 1] == "aac_adtstoasc"
    assert argv[argv.index("-i") + 1] == "/run/l.ffconcat"  # the key stays in the 0600 file
    assert "0:v?" in argv and "0:a?" in argv and "copy" in argv
    no_bsf = build_fmp4_argv(ffmpeg_binary="ffmpeg", input_list="l", port=1, aac_bsf=False)
    assert "-bsf:a" not in no_bsf
    for bad in ({"port": 0}, {"port": 70000}, {"port": 1, "part_seconds": 0}):
        with pytest.raises(ValueError):
            build_fmp4_argv(ffmpeg_binary="ffmpeg", input_list="l", **bad)  # type: ignore[arg-type]
