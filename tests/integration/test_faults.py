"""Fault injection: whatever happens around a live stream, it ends stopped with one ready recording.

Real server processes, real FFmpeg publishers over SRT, real SIGKILLs. Two servers cover the
six faults of issue 13, so the suite stays short:

- one server runs four live streams at once and hits each with its own fault: the publisher
  SIGKILLed for good (a), the ingest FFmpeg SIGKILLed (b), the disk floor reached (e), and
  `streamplat create-admin` / `migrate` / a second `serve` on the same data directory (f);
- another is SIGKILLed mid-stream (c), restarted, SIGKILLed again while the recording is
  `processing` (d), and restarted; it also finds a stream left "stopped, media on disk, no
  recording" by an older crash and records it.

Every case checks what a user would: the stream ends `stopped`, exactly one recording becomes
`ready` with the published media (within two 1 s segments of what was on disk when the fault
hit), its MP4 and JPEG are served, and no FFmpeg the server started outlives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from streamplat.hls.disk import segment_duration
from streamplat.vod.packaging import list_runs
from tests.integration.test_auth import assert_error, bearer
from tests.integration.test_streams import create, playlist, publish, start, status_of
from tests.integration.test_vod import _good_segments, recording, wait_ready
from tests.support.media import FFMPEG, Publisher, ffmpeg_children_listening, probe, wait_for
from tests.support.server import SERVICES, ServerProcess, free_tcp_port

FAULT_ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    # A publisher that does not come back within 2 s is gone: short cases, same code path.
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "2",
}
SMALL = {"size": "320x180", "fps": 25}


def segments_on_disk(server: ServerProcess, sid: str) -> int:
    """Complete segments of a live stream on disk (the LL-HLS layout: seg_{run}_{msn}.m4s)."""
    return sum(len(run.segments) for run in list_runs(server.data_dir / "hls" / sid))


def seconds_on_disk(hls_dir: Path) -> float:
    """Media seconds in the complete fMP4 segments of a stream's folder (from their moofs)."""
    total = 0.0
    for run in list_runs(hls_dir):
        assert run.init is not None, run
        init = run.init.read_bytes()
        total += sum(segment_duration(init, segment.read_bytes()) for segment in run.segments)
    return total


def processes_in(data_dir: Path, exclude: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Command lines of running processes (other than `exclude`) that mention the data dir."""
    found = []
    needle = str(data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in exclude or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if needle in cmd and state != "Z":
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def assert_recorded(
    server: ServerProcess, token: str, sid: str, media_seconds: float, tmp_path: Path
) -> None:
    """Stopped, one ready recording as long as the media (within two segments), files served."""
    wait_for(lambda: status_of(server, token, sid) == "stopped", 30, message=f"{sid} stopped")
    rec = wait_ready(server, sid, timeout=90)
    assert abs(rec["duration_seconds"] - media_seconds) <= 2, (rec, media_seconds)
    listed = server.vod.get("/api/v1/recordings", params={"status": "ready", "limit": 100}).json()
    assert [r["stream_id"] for r in listed["recordings"]].count(sid) == 1
    video = server.vod.get(rec["file_path"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    mp4 = tmp_path / f"{sid}.mp4"
    mp4.write_bytes(video.content)
    assert probe(mp4).video == "h264"
    thumb = server.vod.get(rec["thumbnail_path"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


def cli(server: ServerProcess, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**server.env}
    env.pop("STREAMPLAT_ADMIN_PASSWORD", None)
    if password is not None:
        env["STREAMPLAT_ADMIN_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "streamplat", *args, "--data-dir", str(server.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_live_faults_each_end_with_one_ready_recording(
    server_factory: Callable[..., ServerProcess], publishers: list[Publisher], tmp_path: Path
) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    # The floor sits 4 GiB under what is free now (room for whatever else writes to this disk
    # meanwhile); case (e) later fills the gap and 1 GiB more with a fallocated file.
    floor = shutil.disk_usage(probe_dir).free - (4 << 30)
    srv = server_factory({**FAULT_ENV, "STREAMPLAT_STORAGE__MIN_FREE_BYTES": str(floor)})
    token = srv.user_token("faults")
    cases = ("publisher_killed", "ingest_killed", "disk_floor", "create_admin")
    sids = {case: create(srv, token, case)["stream_id"] for case in cases}
    started = {case: start(srv, token, sid) for case, sid in sids.items()}
    pubs = {case: publish(publishers, started[case]["srt_url"], **SMALL) for case in cases}
    for case, sid in sids.items():
        wait_for(lambda sid=sid: status_of(srv, token, sid) == "active", 30, message=f"{case} active")
    for case, sid in sids.items():
        wait_for(lambda sid=sid: segments_on_disk(srv, sid) >= 3, 30, message=f"{case} segments")
    media: dict[str, float] = {}

    # (a) The publisher dies without a goodbye and never comes back.
    pubs["publisher_killed"].kill()
    media["publisher_killed"] = segments_on_disk(srv, sids["publisher_killed"])

    # (b) The server's own ingest FFmpeg is SIGKILLed mid-stream; the publisher goes with it.
    port = started["ingest_killed"]["port"]
    (ingest_pid,) = ffmpeg_children_listening(port)
    media["ingest_killed"] = segments_on_disk(srv, sids["ingest_killed"])
    os.kill(ingest_pid, signal.SIGKILL)
    pubs["ingest_killed"].kill()

    # (f) Commands run beside the live server touch nothing of it, even when they fail.
    sid_f = sids["create_admin"]
    (f_pid,) = ffmpeg_children_listening(started["create_admin"]["port"])
    segs_before = segments_on_disk(srv, sid_f)
    refused = cli(srv, "create-admin", "--email", "nopass@example.com", "--username", "nopass")
    assert refused.returncode == 2 and "password is required" in refused.stderr
    made = cli(
        srv, "create-admin", "--email", "boss@example.com", "--username", "boss", password="password123"
    )
    assert made.returncode == 0 and "created admin" in made.stdout, made.stderr
    migrated = cli(srv, "migrate")
    assert migrated.returncode == 0 and "is up to date" in migrated.stdout
    other_ports = {f"STREAMPLAT_SERVER__{s.upper()}_PORT": str(free_tcp_port()) for s in SERVICES}
    second = subprocess.run(
        [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(srv.data_dir)],
        env={**srv.env, **other_ports},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert "in use by another streamplat" in second.stderr and f"pid={srv.proc.pid}" in second.stderr  # type: ignore[union-attr]
    assert srv.login("boss")["user"]["role"] == "admin"
    assert status_of(srv, token, sid_f) == "active"
    assert "#EXT-X-ENDLIST" not in playlist(srv, sid_f)
    assert ffmpeg_children_listening(started["create_admin"]["port"]) == [f_pid]
    assert pubs["create_admin"].proc is not None and pubs["create_admin"].proc.poll() is None
    wait_for(lambda: segments_on_disk(srv, sid_f) >= segs_before + 2, 20, message="segments keep coming")

    # (e) The disk floor is reached while live: new streams are refused, the live one goes on.
    sid_e = sids["disk_floor"]
    filler = tmp_path / "filler"
    try:
        with filler.open("wb") as f:
            os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(probe_dir).free - floor + (1 << 30))
        health = srv.main.get("/health").json()
        assert health["status"] == "degraded" and "min_free_bytes" in health["reason"], health
        late = create(srv, token, "late")["stream_id"]
        assert_error(srv.main.post(f"/api/streams/{late}/start", headers=bearer(token)), 507)
        segs = segments_on_disk(srv, sid_e)
        wait_for(
            lambda: segments_on_disk(srv, sid_e) >= segs + 2,
            20,
            message="live stream goes on below the floor",
        )
        assert status_of(srv, token, sid_e) == "active"

        # The owner stops (e) and (f); (a) and (b) stop themselves when nobody comes back.
        for case in ("disk_floor", "create_admin"):
            pubs[case].kill()
            media[case] = segments_on_disk(srv, sids[case])
            r = srv.main.post(f"/api/streams/{sids[case]}/stop", headers=bearer(token))
            assert r.status_code == 200 and r.json()["recording"] is True, r.text
        for case, sid in sids.items():
            assert_recorded(srv, token, sid, media[case], tmp_path)
        for case in ("publisher_killed", "ingest_killed"):
            detail = srv.main.get(f"/api/streams/{sids[case]}", headers=bearer(token)).json()
            assert "publisher" in (detail["status_reason"] or ""), detail
    finally:
        filler.unlink(missing_ok=True)
    for case in cases:
        assert ffmpeg_children_listening(started[case]["port"]) == []
    assert srv.stop() == 0
    assert processes_in(srv.data_dir) == []


SLOW_PACKAGING = """\
#!{python}
# FFmpeg, except that packaging a recording hangs while {marker} exists: it holds a recording
# in "processing" long enough to SIGKILL the server at that moment.
import os, sys, time
if os.path.exists({marker!r}) and any("/recordings/" in a for a in sys.argv[1:]):
    open({marker!r} + ".held-%d" % os.getpid(), "w").close()
    time.sleep(120)
os.execv({ffmpeg!r}, [{ffmpeg!r}, *sys.argv[1:]])
"""


def packaging_holder(tmp_path: Path) -> tuple[Path, Path]:
    """(an FFmpeg wrapper for ffmpeg.binary, its marker): packaging hangs until the marker goes."""
    marker = tmp_path / "hold-packaging"
    marker.touch()
    wrapper = tmp_path / "ffmpeg-wrapper"
    wrapper.write_text(
        textwrap.dedent(SLOW_PACKAGING.format(python=sys.executable, marker=str(marker), ffmpeg=FFMPEG))
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, marker


def test_server_killed_mid_stream_and_mid_packaging_loses_nothing(
    server_factory: Callable[..., ServerProcess], publishers: list[Publisher], tmp_path: Path
) -> None:
    wrapper, marker = packaging_holder(tmp_path)
    srv = server_factory({**FAULT_ENV, "STREAMPLAT_FFMPEG__BINARY": str(wrapper)})
    token = srv.user_token("crasher")
    assert srv.proc is not None

    # An older crash left this stream "stopped" with its media on disk and no recording row.
    orphan = create(srv, token, "orphan")["stream_id"]
    start(srv, token, orphan)
    _good_segments(srv.data_dir / "hls" / orphan)

    # (c) SIGKILL mid-stream.
    live = create(srv, token, "live")["stream_id"]
    started = start(srv, token, live)
    pub = publish(publishers, started["srt_url"], **SMALL)
    wait_for(lambda: status_of(srv, token, live) == "active", 30, message="active")
    wait_for(lambda: segments_on_disk(srv, live) >= 4, 30, message="4 segments")
    media = segments_on_disk(srv, live)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    pub.kill()
    wait_for(lambda: not processes_in(srv.data_dir), 10, message="the server's children to die with it")
    # What the killed server left: every complete segment, by its own media timestamps.
    complete_seconds = seconds_on_disk(srv.data_dir / "hls" / live)
    # A run's first GOP is cut in two (ingest.first_segment_seconds): 4 segments hold 3 s or more.
    assert complete_seconds >= 3 * 0.9
    srv.sql("UPDATE streams SET status = 'stopped', port = NULL WHERE id = ?", orphan)
    assert srv.sql("SELECT count(*) FROM recordings WHERE stream_id = ?", orphan) == [(0,)]

    # (d) Restart (the lock of the killed server is gone), then SIGKILL while both recordings
    # are "processing" with their packaging under way.
    srv.start()
    for sid in (live, orphan):
        assert srv.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()["status"] == "stopped"
        assert recording(srv, sid)["status"] == "processing"
    held = lambda: len(list(tmp_path.glob("hold-packaging.held-*")))  # noqa: E731
    wait_for(lambda: held() >= 2, 30, message="both packaging jobs under way")
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    wait_for(lambda: not processes_in(srv.data_dir), 10, message="packaging to die with the server")

    marker.unlink()
    srv.start()
    assert_recorded(srv, token, live, media, tmp_path)
    # All of it: the recording holds every segment that was complete when the server died.
    rec = recording(srv, live)
    assert abs(rec["duration_seconds"] - complete_seconds) <= 0.25, (rec, complete_seconds)
    assert_recorded(srv, token, orphan, 4, tmp_path)
    assert not list((srv.data_dir / "recordings").rglob(".packaging-*"))  # no temp file left
    assert srv.stop() == 0
    assert processes_in(srv.data_dir) == []
