"""LL-HLS end to end: a real FFmpeg publisher over SRT, the in-process packager, real HTTP.

Every playlist fetched here goes through the invariant checker of design §5
(`streamplat.hls.playlist.check_playlist`). No assertion depends on timing: blocking requests
are checked by what they return (versions, part numbers), never by how long they took.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streamplat.hls.playlist import PlaylistFacts, check_playlist
from tests.integration.test_auth import assert_error, bearer
from tests.integration.test_faults import packaging_holder
from tests.support.media import FFMPEG, Publisher, probe, wait_for
from tests.support.server import ServerProcess, running_server

LIVE_ENV = {"STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60"}


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("llhls"), LIVE_ENV) as srv:
        yield srv


class Live:
    """A started stream with a publisher, and helpers to read its LL-HLS output."""

    def __init__(self, server: ServerProcess, publishers: list[Publisher], name: str) -> None:
        self.server = server
        self.token = server.user_token(name)
        r = server.main.post("/api/streams", json={"name": name}, headers=bearer(self.token))
        assert r.status_code == 201, r.text
        self.sid = r.json()["stream_id"]
        r = server.main.post(f"/api/streams/{self.sid}/start", headers=bearer(self.token))
        assert r.status_code == 200, r.text
        self.srt_url = r.json()["srt_url"]
        self.publishers = publishers
        self.facts: PlaylistFacts | None = None

    def publish(self, **kw: object) -> Publisher:
        p = Publisher(self.srt_url, **kw).start()  # type: ignore[arg-type]
        self.publishers.append(p)
        return p

    def get(self, name: str, **kw: object) -> httpx.Response:
        return self.server.stream.get(f"/hls/{self.sid}/{name}", **kw)  # type: ignore[arg-type]

    def playlist(self, query: str = "") -> str:
        r = self.get("stream.m3u8" + (f"?{query}" if query else ""), timeout=15)
        assert r.status_code == 200, r.text
        self.facts = check_playlist(r.text, self.facts)
        return r.text

    def wait_segments(self, n: int) -> str:
        def ready() -> str | None:
            r = self.get("stream.m3u8", timeout=15)
            if r.status_code != 200:
                return None
            self.facts = check_playlist(r.text, self.facts)
            return r.text if len(uris(r.text)) >= n else None

        return str(wait_for(ready, 30, message=f"{n} segments"))

    def status(self) -> dict:
        return dict(self.server.stream.get(f"/stream/{self.sid}/status").json())

    def stop(self) -> None:
        r = self.server.main.post(f"/api/streams/{self.sid}/stop", headers=bearer(self.token))
        assert r.status_code == 200, r.text


def uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def parts(text: str) -> list[str]:
    return re.findall(r'#EXT-X-PART:.*URI="([^"]+)"', text)


def hint(text: str) -> str | None:
    match = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', text)
    return match.group(1) if match else None


def last_part(text: str) -> tuple[int, int]:
    """(msn, part index) of the playlist's last listed part."""
    lines = text.splitlines()
    msn = int(next(line for line in lines if line.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
    index = -1
    for line in lines:
        if line.startswith("#EXT-X-PART:"):
            index += 1
        elif line and not line.startswith("#"):
            msn += 1
            index = -1
    if index == -1:  # the open segment has no part yet: the last part is the previous segment's
        raise AssertionError("no open part")
    return msn, index


def test_live_llhls_playlist_parts_segments_and_status(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    live = Live(server, publishers, "ll1")
    live.publish()
    text = live.wait_segments(3)
    assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=" in text
    assert "#EXT-X-PART-INF:PART-TARGET=0.2" in text
    assert '#EXT-X-MAP:URI="init_1.mp4"' in text
    assert parts(text) and hint(text)
    assert all(re.fullmatch(r"seg_1_\d+\.m4s", u) for u in uris(text))

    r = live.get("stream.m3u8", headers={"Origin": "http://example.org"})
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["access-control-allow-origin"] in ("*", "http://example.org")
    assert r.headers.get("x-request-id")

    init = live.get("init_1.mp4")
    assert init.status_code == 200 and init.headers["content-type"] == "video/mp4"
    assert "immutable" in init.headers["cache-control"]
    seg_name = uris(text)[-1]
    seg = live.get(seg_name)
    assert seg.status_code == 200 and "immutable" in seg.headers["cache-control"]
    assert seg.content[4:8] == b"moof"
    part_name = parts(text)[-1]
    part = live.get(part_name)
    assert part.status_code == 200 and part.content[4:8] == b"moof"
    head = server.stream.head(f"/hls/{live.sid}/{part_name}")
    assert (
        head.status_code == 200
        and head.content == b""
        and int(head.headers["content-length"]) == len(part.content)
    )

    # init + segment is a playable MP4 with both tracks
    (tmp_path / "one.mp4").write_bytes(init.content + seg.content)
    info = probe(tmp_path / "one.mp4")
    assert info.video == "h264" and info.audio == "aac" and (info.width, info.height) == (640, 360)

    st = live.status()
    hls = st["hls"]
    assert hls["target_duration"] == 1 and hls["part_target"] == pytest.approx(0.2, abs=0.01)
    assert hls["codecs"].startswith("avc1.") and "mp4a.40.2" in hls["codecs"]
    closed = [s for s in hls["segments"] if s["complete"]]
    assert len(closed) >= 3
    for a, b in itertools.pairwise(closed):
        assert b["msn"] == a["msn"] + 1 and b["media_start_seconds"] == pytest.approx(
            a["media_start_seconds"] + a["duration_seconds"], abs=0.002
        )
    assert st["hls_files_count"] >= 3 and st["publisher_connected"] is True
    wait_for(lambda: (live.status().get("bitrate_kbps") or 0) > 0, 10, message="bitrate")
    assert (live.status().get("fps") or 0) > 20
    detail = server.main.get(f"/api/streams/{live.sid}", headers=bearer(live.token)).json()
    assert detail["viewer_count"] >= 1

    live.stop()
    final = live.playlist()
    assert final.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-PART" not in final
    # after the stop the files on disk answer: the index, inits and segments
    assert live.get(seg_name).content == seg.content
    files = sorted(p.name for p in (server.data_dir / "hls" / live.sid).iterdir())
    assert "init_1.mp4" in files and not [f for f in files if f.endswith(".tmp")]


def test_first_playlist_lists_the_early_first_segment_and_plays(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    """ingest.first_segment_seconds (0.2 s by default) closes the run's first segment after its
    first part, so the first playable playlist comes one part after the first fragment; it keeps
    TARGETDURATION at round(segment_seconds) and the recording whole (design §3.4 item 8)."""
    live = Live(server, publishers, "llfirst")
    live.publish()

    def first() -> str | None:
        r = live.get("stream.m3u8")
        return r.text if r.status_code == 200 else None

    text = str(wait_for(first, 30, interval=0.05, message="the first playlist"))
    live.facts = check_playlist(text, None)
    assert uris(text)[0] == "seg_1_0.m4s"
    extinf = [float(x) for x in re.findall(r"#EXTINF:([\d.]+),", text)]
    assert extinf[0] == pytest.approx(0.2, abs=0.01)  # one part, not a whole 1 s GOP
    assert live.facts.target_duration == 1 and live.facts.part_target == pytest.approx(0.2, abs=0.001)
    # init + that one segment already play, with both tracks (the 0.5 s probe kept the AAC)
    init, seg = live.get("init_1.mp4").content, live.get("seg_1_0.m4s").content
    (tmp_path / "first.mp4").write_bytes(init + seg)
    info = probe(tmp_path / "first.mp4")
    assert (info.video, info.audio) == ("h264", "aac")

    text = live.wait_segments(4)  # check_playlist: TD and PART-TARGET as in the first playlist
    assert live.facts.target_duration == 1 and live.facts.part_target == pytest.approx(0.2, abs=0.001)
    # the rest of the first GOP closes at the next keyframe; from then on a segment per GOP
    status = live.status()["hls"]
    closed = [s for s in status["segments"] if s["complete"]]
    assert [s["independent"] for s in closed[:3]] == [True, False, True]
    assert closed[0]["duration_seconds"] + closed[1]["duration_seconds"] == pytest.approx(1.0, abs=0.01)
    # the recording on disk: the short segment is in the index, and init + segments play for
    # as long as the index says
    folder = server.data_dir / "hls" / live.sid
    wait_for(lambda: len(list(folder.glob("seg_1_*.m4s"))) >= 4, 20, message="4 segments on disk")
    index = (folder / "stream.m3u8").read_text()
    names = uris(index)
    assert names[0] == "seg_1_0.m4s"
    durations = [float(x) for x in re.findall(r"#EXTINF:([\d.]+),", index)]
    assert durations[0] == pytest.approx(0.2, abs=0.01)
    joined = tmp_path / "joined.mp4"
    joined.write_bytes(
        (folder / "init_1.mp4").read_bytes() + b"".join((folder / n).read_bytes() for n in names)
    )
    info = probe(joined)
    assert (info.video, info.audio) == ("h264", "aac")
    # (the container's duration also covers the audio, which may run a frame or two longer)
    assert sum(durations) - 0.05 <= (info.duration or 0) <= sum(durations) + 0.3
    live.stop()


def test_blocking_reload_returns_the_asked_part(server: ServerProcess, publishers: list[Publisher]) -> None:
    live = Live(server, publishers, "ll2")
    live.publish()
    text = live.wait_segments(2)
    for _ in range(5):
        msn, index = last_part(text)
        text = live.playlist(f"_HLS_msn={msn}&_HLS_part={index + 1}")
        # the answer lists the asked part (or, past the segment's end, the next segment's first)
        new_msn, new_index = last_part(text)
        assert (new_msn, new_index) > (msn, index)
    # _HLS_msn alone: answered once that segment is complete
    status = live.status()["hls"]
    nxt = status["last_msn"] + 1
    text = live.playlist(f"_HLS_msn={nxt}")
    assert int(re.findall(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)[0]) + len(uris(text)) - 1 >= nxt

    # the hinted part: a request for it is held and gets exactly the bytes listed next
    text = live.playlist()
    hinted = hint(text)
    assert hinted is not None
    body = live.get(hinted, timeout=15)
    assert body.status_code == 200 and body.content[4:8] == b"moof"
    later = live.playlist(f"_HLS_msn={last_part(text)[0]}&_HLS_part={last_part(text)[1] + 1}")
    assert hinted in parts(later) or hinted not in text
    assert live.get(hinted).content == body.content
    live.stop()


BAD_REQUESTS = [
    ("_HLS_part=1", "_HLS_part requires _HLS_msn"),
    ("_HLS_msn=abc", "non-negative integer"),
    ("_HLS_msn=-3", "non-negative integer"),
    ("_HLS_msn=1&_HLS_part=x", "non-negative integer"),
    ("_HLS_msn=1&_HLS_msn=2", "more than once"),
    ("_HLS_msn=99999", "more than 2 segments"),
]


def test_bad_blocking_requests_are_400(server: ServerProcess, publishers: list[Publisher]) -> None:
    live = Live(server, publishers, "ll400")
    live.publish()
    live.wait_segments(1)
    for query, message in BAD_REQUESTS:
        r = live.get(f"stream.m3u8?{query}")
        assert_error(r, 400)
        assert message in r.json()["message"], query
    live.stop()
    # after ENDLIST the directives are ignored (RFC 8216bis 6.2.5.2): the final playlist at once
    assert live.get("stream.m3u8?_HLS_msn=99999&_HLS_part=3").text.rstrip().endswith("#EXT-X-ENDLIST")


def test_too_many_parts_ahead_is_400_and_unknown_names_404(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    live = Live(server, publishers, "ll3")
    live.publish()
    text = live.wait_segments(2)
    msn, _ = last_part(text)
    assert_error(live.get(f"stream.m3u8?_HLS_msn={msn + 1}&_HLS_part=40"), 400)
    folder = server.data_dir / "hls" / live.sid
    (folder.parent / "secret.txt").write_text("never served")
    for name in [
        "part_1_999999.m4s",  # far past the hint
        "part_0_0.m4s",
        "seg_1_99999.m4s",
        "init_7.mp4",
        "..%2Fsecret.txt",
        "%2e%2e%2fsecret.txt",
        "seg_1_0.m4s%00",
        "stream.m3u8.tmp",
        "part_1_00000000000000000001.m4s",
    ]:
        r = live.get(name)
        assert r.status_code == 404, (name, r.status_code)
        assert b"never served" not in r.content
    r = server.stream.get(f"/hls/{live.sid}/../secret.txt")
    assert b"never served" not in r.content
    live.stop()


def test_legacy_client_ffmpeg_reads_the_live_playlist(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    live = Live(server, publishers, "ll4")
    live.publish()
    live.wait_segments(3)
    url = server.url("stream", f"/hls/{live.sid}/stream.m3u8")
    out = subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            url,
            "-t",
            "2",
            "-c",
            "copy",
            str(tmp_path / "l.mp4"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    info = probe(tmp_path / "l.mp4")
    assert info.video == "h264" and info.audio == "aac" and (info.duration or 0) >= 1.5
    live.stop()


def test_reconnect_gives_a_discontinuity_a_new_map_and_one_recording(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    live = Live(server, publishers, "ll5")
    first = live.publish()
    live.wait_segments(3)
    # a request held for the next part while the publisher goes away is answered, never hangs
    text = live.playlist()
    held: list[httpx.Response] = []
    hinted = hint(text)
    assert hinted is not None
    waiter = threading.Thread(target=lambda: held.append(live.get(hinted, timeout=30)))
    waiter.start()
    first.kill()
    waiter.join()
    assert held[0].status_code in (200, 404)
    wait_for(lambda: not live.status()["publisher_connected"], 20, message="publisher gone")
    # no publisher: a blocking request for the next segment is answered 503 after its hold
    nxt = live.status()["hls"]["last_msn"] + 1
    r = live.get(f"stream.m3u8?_HLS_msn={nxt}", timeout=30)
    assert_error(r, 503)
    assert r.headers["retry-after"] == "1"
    live.publish()

    def second_run() -> str | None:
        text = live.get("stream.m3u8").text
        return text if 'init_2.mp4"' in text and "seg_2_" in text else None

    text = wait_for(second_run, 30, message="second run in the playlist")
    live.facts = check_playlist(text, live.facts)
    lines = text.splitlines()
    at = lines.index('#EXT-X-MAP:URI="init_2.mp4"')
    assert lines[at - 1] == "#EXT-X-DISCONTINUITY"
    msns = [int(u.split("_")[2].split(".")[0]) for u in uris(text)]
    assert msns == list(range(msns[0], msns[0] + len(msns)))
    wait_for(
        lambda: len(uris(live.playlist())) >= 6 and "seg_1_" not in live.playlist(), 30, message="run 1 out"
    )
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in live.playlist()
    live.stop()
    index = (server.data_dir / "hls" / live.sid / "stream.m3u8").read_text()
    assert index.count("#EXT-X-DISCONTINUITY\n") == 1 and index.rstrip().endswith("#EXT-X-ENDLIST")


def test_an_opus_publisher_plays_after_the_aac_filter_fallback(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    """MPEG-TS AAC needs aac_adtstoasc, which FFmpeg refuses for Opus: the listener retries
    without it (design §3.2), and the stream plays with its Opus track."""
    live = Live(server, publishers, "llopus")
    argv = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re"]
    argv += [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=48000",
    ]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30"]
    argv += ["-c:a", "libopus", "-f", "mpegts", live.srt_url]
    procs: list[subprocess.Popen[bytes]] = []

    def publishing() -> bool:
        # An SRT caller whose listener went away exits: start another, as OBS would retry.
        if not procs or procs[-1].poll() is not None:
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        r = live.get("stream.m3u8")
        return r.status_code == 200 and "seg_" in r.text

    try:
        wait_for(publishing, 60, interval=0.5, message="a playlist from the Opus publisher")
        text = live.wait_segments(2)
        hls = live.status()["hls"]
        assert "Opus" in hls["codecs"] and hls["codecs"].startswith("avc1."), hls
        assert live.status()["restarts"] >= 1
        init = live.get(re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)[-1])
        assert b"Opus" in init.content
        live.stop()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sigkill_mid_stream_keeps_every_complete_segment_playable(
    server_factory: Callable[..., ServerProcess], publishers: list[Publisher], tmp_path: Path
) -> None:
    """A SIGKILLed server loses at most the segment in progress: every segment file on disk is
    whole, listed in the index after the restart, and init + segments play as one MP4."""
    # The restart records the stream, and a ready recording removes the folder this test reads:
    # hold the packaging (test_faults' FFmpeg wrapper) while the folder is checked.
    wrapper, _ = packaging_holder(tmp_path)
    srv = server_factory({**LIVE_ENV, "STREAMPLAT_FFMPEG__BINARY": str(wrapper)})
    assert srv.proc is not None
    live = Live(srv, publishers, "llkill")
    pub = live.publish()
    live.wait_segments(4)
    folder = srv.data_dir / "hls" / live.sid
    wait_for(lambda: len(list(folder.glob("seg_1_*.m4s"))) >= 4, 20, message="4 segments on disk")
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    pub.kill()
    on_disk = sorted(folder.glob("seg_1_*.m4s"), key=lambda p: int(p.stem.split("_")[2]))
    msns = [int(p.stem.split("_")[2]) for p in on_disk]
    assert msns == list(range(len(msns)))  # contiguous from 0: nothing half-written was renamed

    srv.start()  # crash recovery: the stream is stopped, its index ended and rebuilt from the files
    index = (folder / "stream.m3u8").read_text()
    assert index.rstrip().endswith("#EXT-X-ENDLIST")
    assert [f"seg_1_{n}.m4s" for n in msns] == uris(index)[: len(msns)]
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    joined = tmp_path / "joined.mp4"
    joined.write_bytes((folder / "init_1.mp4").read_bytes() + b"".join(p.read_bytes() for p in on_disk))
    info = probe(joined)
    assert info.video == "h264" and info.audio == "aac"
    expected = sum(float(x) for x in re.findall(r"#EXTINF:([\d.]+),", index))
    assert info.duration == pytest.approx(expected, abs=0.3)
    # the stream answers from the files now: final index, a segment, no parts
    assert live.get("stream.m3u8").text == index
    assert live.get(f"seg_1_{msns[0]}.m4s").content == on_disk[0].read_bytes()
    assert live.get("part_1_0.m4s").status_code == 404
