"""Recordings end to end: publish over SRT, stop, and get a seekable MP4 + thumbnail."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamplat.vod.packaging import list_runs
from tests.integration.test_auth import assert_error, bearer, create_admin
from tests.integration.test_streams import LIVE_ENV, create, publish, start, status_of
from tests.support.fmp4 import make_fmp4_run
from tests.support.media import FFMPEG, Publisher, decode_errors, probe, wait_for
from tests.support.server import ServerProcess, running_server


@pytest.fixture(name="server", scope="module")
def fixture_vod_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("vod"), LIVE_ENV, db=db) as srv:
        yield srv


def recording(server: ServerProcess, sid: str) -> dict:
    r = server.vod.get(f"/api/v1/recordings/{sid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_ready(server: ServerProcess, sid: str, timeout: float = 60) -> dict:
    def ready() -> dict | None:
        rec = recording(server, sid)
        assert rec["status"] != "failed", rec
        return rec if rec["status"] == "ready" else None

    return dict(wait_for(ready, timeout, interval=0.3, message="recording ready"))


def top_level_boxes(data: bytes) -> list[str]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def record(
    server: ServerProcess, publishers: list[Publisher], token: str, seconds: float
) -> tuple[str, dict]:
    """Publish `seconds` of media to a new stream, let the publisher finish, stop the stream."""
    sid = create(server, token, "Recorded", title="My Recorded Stream")["stream_id"]
    started = start(server, token, sid)
    pub = publish(publishers, started["srt_url"], duration=seconds)
    wait_for(lambda: status_of(server, token, sid) == "active", 15, message="active")
    pub.wait(seconds + 20)
    wait_for(lambda: status_of(server, token, sid) == "waiting", 20, message="publisher finished")
    r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text
    return sid, started


def test_stopped_stream_becomes_a_seekable_recording(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    token = server.user_token("recorder1")
    sid, _ = record(server, publishers, token, 8)
    rec = recording(server, sid)  # the row exists as soon as the stop returned
    assert rec["status"] in ("processing", "ready")
    rec = wait_ready(server, sid)
    assert set(rec) >= {
        "id",
        "stream_id",
        "user_id",
        "username",
        "title",
        "duration_seconds",
        "file_path",
        "thumbnail_path",
        "file_size_bytes",
        "status",
        "created_at",
        "updated_at",
    }
    assert rec["file_path"] == f"/recordings/vod/{sid}/video.mp4"
    assert rec["thumbnail_path"] == f"/recordings/vod/{sid}/thumbnail.jpg"
    assert rec["username"] == "recorder1" and rec["title"] == "My Recorded Stream"
    assert abs(rec["duration_seconds"] - 8) <= 1
    on_disk = server.data_dir / "recordings" / "vod" / sid
    assert (on_disk / "video.mp4").is_file() and (on_disk / "thumbnail.jpg").is_file()

    r = server.vod.get(rec["file_path"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert int(r.headers["content-length"]) == rec["file_size_bytes"] == len(r.content)
    assert r.headers["accept-ranges"] == "bytes" and r.headers.get("etag") and r.headers.get("last-modified")
    boxes = top_level_boxes(r.content)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart
    mp4 = tmp_path / "video.mp4"
    mp4.write_bytes(r.content)
    info = probe(mp4)
    assert info.video == "h264" and info.audio == "aac"
    assert info.duration is not None and abs(info.duration - 8) <= 1
    assert decode_errors(mp4) == ""
    assert server.vod.get(f"/api/v1/recordings/{sid}/video").content == r.content

    part = server.vod.get(rec["file_path"], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == r.content[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(r.content)}"
    tail = server.vod.get(rec["file_path"], headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == r.content[-500:]
    assert_error(server.vod.get(rec["file_path"], headers={"Range": f"bytes={len(r.content) + 10}-"}), 416)
    head = server.vod.head(rec["file_path"])
    assert (
        head.status_code == 200
        and head.content == b""
        and int(head.headers["content-length"]) == len(r.content)
    )

    thumb = server.vod.get(f"/api/v1/recordings/{sid}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    (tmp_path / "t.jpg").write_bytes(thumb.content)
    assert (probe(tmp_path / "t.jpg").width, probe(tmp_path / "t.jpg").height) == (640, 360)
    assert server.vod.get(rec["thumbnail_path"]).content == thumb.content
    # The live segments went away once the MP4 held them all.
    assert not (server.data_dir / "hls" / sid).exists()


def test_reconnect_gives_one_recording_of_both_parts(
    server: ServerProcess, publishers: list[Publisher], tmp_path: Path
) -> None:
    token = server.user_token("recorder2")
    sid = create(server, token)["stream_id"]
    started = start(server, token, sid)
    for _ in range(2):
        pub = publish(publishers, started["srt_url"], duration=5)
        wait_for(lambda: status_of(server, token, sid) == "active", 15, message="active")
        pub.wait(30)
        wait_for(lambda: status_of(server, token, sid) == "waiting", 20, message="publisher gone")
    # Each publisher session is one run with its own init on disk (the fMP4 layout).
    runs = list_runs(server.data_dir / "hls" / sid)
    assert [r.run for r in runs] == [1, 2] and all(r.init and r.segments for r in runs), runs
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    rec = wait_ready(server, sid)
    assert abs(rec["duration_seconds"] - 10) <= 1
    mp4 = tmp_path / "both.mp4"
    mp4.write_bytes(server.vod.get(rec["file_path"]).content)
    assert decode_errors(mp4) == ""
    boxes = top_level_boxes(mp4.read_bytes())
    assert boxes.count("moov") == 1 and boxes.index("moov") < boxes.index("mdat"), boxes


def test_stream_without_media_has_no_recording(server: ServerProcess) -> None:
    token = server.user_token("recorder3")
    sid = create(server, token)["stream_id"]
    start(server, token, sid)
    r = server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert "no recording" in r.json()["message"]
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}"), 404)


def _fake_session(server: ServerProcess, token: str, segments: Callable[[Path], None]) -> str:
    """A started stream whose HLS folder is filled by `segments` instead of a publisher, then stopped."""
    sid = create(server, token)["stream_id"]
    start(server, token, sid)
    segments(server.data_dir / "hls" / sid)
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    return sid


def _good_segments(folder: Path) -> None:
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(folder / "segment_%05d.ts"),
            str(folder / "fixed.m3u8"),
        ],
        check=True,
        timeout=60,
    )


def _damaged_fmp4_runs(folder: Path) -> None:
    """Two runs as the LL-HLS disk writer leaves them, with the damage a crash or disk can do."""
    first = make_fmp4_run(FFMPEG, folder, 4, run=1, size="320x240")
    make_fmp4_run(FFMPEG, folder, 3, run=2, first_msn=len(first.segments), size="320x240")
    cut = first.segments[-1]
    os.truncate(cut, cut.stat().st_size // 2)  # cut short: its whole fragments are kept
    (folder / f"seg_1_{len(first.segments)}.m4s.tmp").write_bytes(b"unfinished")  # never trusted
    (folder / "seg_3_99.m4s").write_bytes(os.urandom(5000))  # a run without an init


def test_damaged_fmp4_folder_is_recorded_from_its_good_parts(server: ServerProcess, tmp_path: Path) -> None:
    token = server.user_token("recorder5")
    sid = _fake_session(server, token, _damaged_fmp4_runs)
    rec = wait_ready(server, sid)
    assert 6.0 <= rec["duration_seconds"] <= 7.2, rec  # 3.5 s .. 4 s of run 1, then 3 s of run 2
    mp4 = tmp_path / "damaged.mp4"
    mp4.write_bytes(server.vod.get(rec["file_path"]).content)
    info = probe(mp4)
    assert (info.video, info.audio, info.width, info.height) == ("h264", "aac", 320, 240)
    assert decode_errors(mp4) == ""


def test_corrupt_source_fails_with_reason_and_retry_works(server: ServerProcess) -> None:
    token = server.user_token("recorder4")

    def garbage(folder: Path) -> None:
        for n in range(3):
            (folder / f"segment_{n:05d}.ts").write_bytes(os.urandom(50_000))

    sid = _fake_session(server, token, garbage)
    rec = wait_for(
        lambda: recording(server, sid)["status"] == "failed" and recording(server, sid), 60, message="failed"
    )
    assert rec["error"]
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}/video"), 409)
    other = server.user_token("recorder4b")
    assert_error(server.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(other)), 403)
    folder = server.data_dir / "hls" / sid
    assert folder.is_dir()  # the source is kept for a retry
    for f in folder.glob("segment_*.ts"):
        f.unlink()
    _good_segments(folder)
    r = server.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token))
    assert r.status_code == 202 and r.json()["status"] == "processing"
    rec = wait_ready(server, sid)
    assert abs(rec["duration_seconds"] - 4) <= 1 and rec["error"] is None
    assert_error(server.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token)), 409)


def test_delete_and_owner_matrix(server: ServerProcess) -> None:
    owner = server.user_token("recowner")
    sid = _fake_session(server, owner, _good_segments)
    rec = wait_ready(server, sid)
    viewer = server.user_token("recviewer", "viewer")
    other = server.user_token("recother")
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}"), 401)
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(viewer)), 403)
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(other)), 403)
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}", headers=bearer("bad-token")), 401)
    assert server.vod.get(f"/api/v1/recordings/{sid}", headers=bearer(viewer)).status_code == 200
    assert server.vod.get(rec["file_path"]).status_code == 200
    r = server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(owner))
    assert r.status_code == 200 and r.json() == {
        "message": "Recording deleted successfully",
        "stream_id": sid,
    }
    assert not (server.data_dir / "recordings" / "vod" / sid).exists()
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}"), 404)
    assert_error(server.vod.get(rec["file_path"]), 404)
    admin = create_admin(server, "vodadmin")
    sid2 = _fake_session(server, owner, _good_segments)
    wait_ready(server, sid2)
    assert server.vod.delete(f"/api/v1/recordings/{sid2}", headers=bearer(admin)).status_code == 200


def test_deleting_a_stream_keeps_its_recording(server: ServerProcess) -> None:
    owner = server.user_token("keeper")
    sid = _fake_session(server, owner, _good_segments)
    wait_ready(server, sid)
    assert server.main.delete(f"/api/streams/{sid}", headers=bearer(owner)).status_code == 200
    assert recording(server, sid)["status"] == "ready"


def test_list_recordings_filters_and_pages(server: ServerProcess) -> None:
    token = server.user_token("lister")
    user_id = server.auth.get("/auth/validate", headers=bearer(token)).json()["user"]["id"]
    sids = [_fake_session(server, token, _good_segments) for _ in range(3)]
    for sid in sids:
        wait_ready(server, sid)
    page = server.vod.get("/api/v1/recordings", params={"user_id": user_id, "limit": 2}).json()
    assert page["total"] == 3 and len(page["recordings"]) == 2
    assert page["pagination"] == {"limit": 2, "offset": 0, "has_more": True}
    assert [r["stream_id"] for r in page["recordings"]] == sids[::-1][:2]  # newest first
    last = server.vod.get("/api/v1/recordings", params={"user_id": user_id, "limit": 2, "offset": 2}).json()
    assert last["pagination"]["has_more"] is False and len(last["recordings"]) == 1
    ready = server.vod.get("/api/v1/recordings", params={"user_id": user_id, "status": "ready"}).json()
    assert ready["total"] == 3
    for params in ({"status": "done"}, {"limit": 0}, {"limit": 500}, {"user_id": "me"}, {"offset": -5}):
        assert_error(server.vod.get("/api/v1/recordings", params=params), 422)
    assert_error(server.vod.get("/api/v1/recordings/../../etc/passwd"), 404)


def test_spec_javascript_client_lists_recordings(
    server_factory: Callable[..., ServerProcess], run_spec_client
) -> None:
    srv = server_factory(LIVE_ENV, spec_ports=True)
    token = srv.user_token("jsrec")
    user_id = srv.auth.get("/auth/validate", headers=bearer(token)).json()["user"]["id"]
    sid = _fake_session(srv, token, _good_segments)
    wait_ready(srv, sid)
    (result,) = run_spec_client(f"http://{srv.host}", [["getRecordings", user_id, 10, 0]], token)
    assert result["ok"]
    body = result["result"]
    assert body["total"] == 1 and body["recordings"][0]["stream_id"] == sid
    assert body["pagination"] == {"limit": 10, "offset": 0, "has_more": False}


def test_crashed_job_fails_with_a_reason_and_can_be_retried(server: ServerProcess) -> None:
    token = server.user_token("crashjob")
    sid = create(server, token)["stream_id"]
    start(server, token, sid)
    _good_segments(server.data_dir / "hls" / sid)
    # A file where the recording's folder belongs: packaging cannot even begin (not an FFmpeg
    # failure, a crash of the job), which once left the recording "processing" for ever.
    blocker = server.data_dir / "recordings" / "vod" / sid
    blocker.write_bytes(b"in the way")
    server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    rec = wait_for(
        lambda: recording(server, sid)["status"] == "failed" and recording(server, sid), 30, message="failed"
    )
    assert "internal error" in rec["error"] and "FileExistsError" in rec["error"]
    blocker.unlink()
    r = server.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token))
    assert r.status_code == 202, r.text
    assert abs(wait_ready(server, sid)["duration_seconds"] - 4) <= 1
    assert server.vod.get("/health").status_code == 200  # the workers survived the crash


def test_recording_reads_are_cached_but_every_change_shows_at_once(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A long cache, so that what the API shows after each change can only come from invalidation.
    srv = server_factory({**LIVE_ENV, "STREAMPLAT_SERVER__READ_CACHE_SECONDS": "30"})
    token = srv.user_token("vodcached")
    first = _fake_session(srv, token, _good_segments)
    rec = wait_ready(srv, first)  # polled while "processing": the ready commit shows at once

    def listed() -> dict[str, dict]:
        r = srv.vod.get("/api/v1/recordings", params={"limit": 100})
        assert r.status_code == 200, r.text
        return {item["stream_id"]: item for item in r.json()["recordings"]}

    assert listed()[first]["status"] == "ready"
    # Behind the server's back (SQL): not seen while cached, which proves the reads are cached ...
    srv.sql("UPDATE recordings SET title = 'Edited by SQL' WHERE stream_id = ?", first)
    assert recording(srv, first)["title"] == rec["title"]
    assert listed()[first]["title"] == rec["title"]
    assert srv.vod.get(rec["thumbnail_path"]).status_code == 200
    # ... while a stream stopped through the server lists its new recording on the next read,
    # and the pages are read again.
    second = _fake_session(srv, token, _good_segments)
    now = listed()
    assert now[second]["status"] in ("processing", "ready")
    assert now[first]["title"] == "Edited by SQL"
    wait_ready(srv, second)
    r = srv.vod.delete(f"/api/v1/recordings/{first}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert first not in listed()
    assert_error(srv.vod.get(f"/api/v1/recordings/{first}"), 404)
    assert_error(srv.vod.get(rec["thumbnail_path"]), 404)
