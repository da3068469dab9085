"""Recordings in S3-compatible object storage, against moto's real S3 HTTP server.

A real stream (FFmpeg over SRT) becomes a recording whose MP4 and thumbnail live in the bucket;
the VOD port redirects to presigned URLs, and the store itself serves byte ranges. The store
going away at the wrong moments never costs a recording.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamplat.config import ObjectStorageSettings
from streamplat.vod.objectstore import ObjectStorageError, ObjectStore
from tests.integration.test_auth import assert_error, bearer
from tests.integration.test_streams import LIVE_ENV
from tests.integration.test_vod import _fake_session, _good_segments, record, recording, top_level_boxes
from tests.support.media import Publisher, decode_errors, probe, wait_for
from tests.support.s3 import CREDENTIALS, MotoServer, running_moto
from tests.support.server import ServerProcess, make_server, running_server

BUCKET = "streamplat-recordings"
# Quick retries, so the tests see the store come back within a second or two.
FAST_RETRIES = {"retry_base_seconds": "0.3", "retry_max_seconds": "1", "upload_attempts": "1000"}


@pytest.fixture(name="moto", scope="module")
def fixture_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        yield moto


@pytest.fixture(name="s3")
def fixture_s3(moto: MotoServer) -> Any:
    """A test's own client of the bucket (the store restarts in some tests: not cached)."""
    return moto.client()


@pytest.fixture(name="server", scope="module")
def fixture_s3_server(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[ServerProcess]:
    env = {**LIVE_ENV, **moto.server_env(BUCKET, **FAST_RETRIES)}
    with running_server(tmp_path_factory.mktemp("s3vod"), env) as srv:
        yield srv


def ensure_up(moto: MotoServer) -> None:
    """Start the store again after a test stopped it (moto restarts empty: recreate the bucket)."""
    if moto.proc is None:
        moto.start()
        moto.client().create_bucket(Bucket=BUCKET)


def keys(s3: Any) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def wait_status(server: ServerProcess, sid: str, status: str, timeout: float = 90) -> dict:
    def reached() -> dict | None:
        rec = recording(server, sid)
        if status != "failed":
            assert rec["status"] != "failed", rec
        return rec if rec["status"] == status else None

    return dict(wait_for(reached, timeout, interval=0.3, message=f"recording {status}"))


def local_copies_removed(server: ServerProcess, sid: str) -> None:
    """The local MP4, thumbnail and live segments go right after the row says ready (never before:
    a crash in between must find them), so tests wait for that rather than race it."""
    local = (server.data_dir / "recordings" / "vod" / sid, server.data_dir / "hls" / sid)
    wait_for(lambda: not any(p.exists() for p in local), 30, 0.1, "local copies removed")


def stored_etag(server: ServerProcess, key: str) -> str:
    """The ETag the server confirmed by HEAD after uploading `key` (from its log)."""
    found = re.findall(rf"stored {re.escape(key)} \((\d+) bytes, ETag ([0-9a-f-]+)\)", server.logs())
    assert found, f"no upload of {key} logged"
    return str(found[-1][1])


def test_recording_is_stored_in_the_bucket_and_served_by_redirect(
    server: ServerProcess, publishers: list[Publisher], s3: Any, tmp_path: Path
) -> None:
    token = server.user_token("s3rec")
    sid, _ = record(server, publishers, token, 6)
    rec = wait_status(server, sid, "ready")
    assert rec["storage"] == "object_storage" and rec["status_reason"] is None
    # The paths of the spec stay the same; the files are in the bucket, not on the disk.
    assert rec["file_path"] == f"/recordings/vod/{sid}/video.mp4"
    assert keys(s3) >= {f"recordings/{sid}/video.mp4", f"recordings/{sid}/thumbnail.jpg"}
    local_copies_removed(server, sid)

    obj = s3.get_object(Bucket=BUCKET, Key=f"recordings/{sid}/video.mp4")
    data = obj["Body"].read()
    assert obj["ContentType"] == "video/mp4" and len(data) == rec["file_size_bytes"]
    # The bytes in the bucket are the bytes the server packaged: it confirmed this MD5 (ETag)
    # against its local file before deleting that file.
    assert hashlib.md5(data).hexdigest() == stored_etag(server, f"recordings/{sid}/video.mp4")
    mp4 = tmp_path / "stored.mp4"
    mp4.write_bytes(data)
    info = probe(mp4)
    assert info.video == "h264" and info.audio == "aac"
    assert info.duration is not None and abs(info.duration - 6) <= 1
    assert decode_errors(mp4) == ""
    boxes = top_level_boxes(data)
    assert boxes.index("moov") < boxes.index("mdat")

    for path in (rec["file_path"], f"/api/v1/recordings/{sid}/video"):
        r = server.vod.get(path)
        assert r.status_code == 302, r.text
        location = r.headers["location"]
        assert location.startswith(f"{server.env['STREAMPLAT_OBJECT_STORAGE__ENDPOINT_URL']}/{BUCKET}/")
        assert "X-Amz-Signature=" in location and "max-age=60" in r.headers["cache-control"]
        # What a <video src> does: follow the redirect, then seek with byte ranges at the store.
        full = httpx.get(location)
        assert full.status_code == 200 and full.content == data
        part = httpx.get(location, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
    followed = httpx.get(server.url("vod", rec["file_path"]), follow_redirects=True)
    assert followed.status_code == 200 and followed.content == data
    head = server.vod.head(rec["file_path"])
    assert head.status_code == 302
    stored_head = httpx.head(head.headers["location"])
    assert stored_head.status_code == 200 and int(stored_head.headers["content-length"]) == len(data)

    thumb = httpx.get(server.url("vod", rec["thumbnail_path"]), follow_redirects=True)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert thumb.headers["content-type"] == "image/jpeg"
    api_thumb = server.vod.get(f"/api/v1/recordings/{sid}/thumbnail")
    assert api_thumb.status_code == 302 and httpx.get(api_thumb.headers["location"]).content == thumb.content

    # Deleting: the owner matrix is unchanged, and the objects go with the row.
    viewer = server.user_token("s3viewer", "viewer")
    other = server.user_token("s3other")
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}"), 401)
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(viewer)), 403)
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(other)), 403)
    assert f"recordings/{sid}/video.mp4" in keys(s3)
    r = server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(token))
    assert r.status_code == 200 and r.json()["stream_id"] == sid
    assert not {k for k in keys(s3) if sid in k}
    assert httpx.get(location).status_code == 404
    assert_error(server.vod.get(rec["file_path"]), 404)
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}"), 404)
    assert_error(server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(token)), 404)


def test_store_down_keeps_the_files_says_why_and_recovers(server: ServerProcess, moto: MotoServer) -> None:
    token = server.user_token("s3down")
    moto.stop()
    try:
        sid = _fake_session(server, token, _good_segments)

        def waiting() -> dict | None:
            rec = recording(server, sid)
            reason = rec["status_reason"] or ""
            return rec if "waiting for object storage" in reason else None

        rec = wait_for(waiting, 60, interval=0.3, message="a reason to wait")
        assert rec["status"] == "processing"
        assert f"unreachable at {moto.endpoint}" in rec["status_reason"]
        # Nothing is deleted while the store has not confirmed the objects.
        local = server.data_dir / "recordings" / "vod" / sid
        assert (local / "video.mp4").stat().st_size == rec["file_size_bytes"]
        assert (local / "thumbnail.jpg").is_file()
        assert (server.data_dir / "hls" / sid).is_dir()
        assert_error(server.vod.get(rec["file_path"]), 409)
        health = wait_for(
            lambda: (h := server.vod.get("/health").json())["status"] == "degraded" and h,
            10,
            message="degraded",
        )
        assert "recordings wait for object storage" in health["reason"] and moto.endpoint in health["reason"]
    finally:
        ensure_up(moto)
    rec = wait_status(server, sid, "ready")
    wait_for(lambda: server.vod.get("/health").json()["status"] == "healthy", 10, message="healthy again")
    assert rec["storage"] == "object_storage" and rec["status_reason"] is None
    s3 = moto.client()
    assert {f"recordings/{sid}/video.mp4", f"recordings/{sid}/thumbnail.jpg"} <= keys(s3)
    local_copies_removed(server, sid)
    stored = s3.get_object(Bucket=BUCKET, Key=f"recordings/{sid}/video.mp4")["Body"].read()
    assert hashlib.md5(stored).hexdigest() == stored_etag(server, f"recordings/{sid}/video.mp4")
    assert len(stored) == rec["file_size_bytes"]

    # A delete while the store is down is refused with the reason, and nothing is lost.
    moto.stop()
    try:
        r = server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(token))
        body = assert_error(r, 503)
        assert "unreachable" in body["message"]
        assert recording(server, sid)["status"] == "ready"
    finally:
        ensure_up(moto)
    assert server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(token)).status_code == 200
    assert_error(server.vod.get(f"/api/v1/recordings/{sid}"), 404)


def test_upload_gives_up_after_its_attempts_and_retry_uploads(
    moto: MotoServer, server_factory: Callable[..., ServerProcess]
) -> None:
    srv = server_factory(
        moto.server_env(BUCKET, retry_base_seconds="0.2", retry_max_seconds="0.2", upload_attempts="3")
    )
    token = srv.user_token("s3giveup")
    moto.stop()
    try:
        sid = _fake_session(srv, token, _good_segments)
        rec = wait_status(srv, sid, "failed", timeout=60)
        assert "after 3 attempts" in rec["error"] and f"unreachable at {moto.endpoint}" in rec["error"]
        assert rec["status_reason"] is None
        assert (srv.data_dir / "recordings" / "vod" / sid / "video.mp4").is_file()
        assert_error(srv.vod.get(rec["file_path"]), 409)
    finally:
        ensure_up(moto)
    other = srv.user_token("s3giveup2")
    assert_error(srv.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(other)), 403)
    r = srv.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token))
    assert r.status_code == 202 and r.json()["status"] == "processing"
    rec = wait_status(srv, sid, "ready")
    assert rec["storage"] == "object_storage" and abs(rec["duration_seconds"] - 4) <= 1
    assert f"recordings/{sid}/video.mp4" in keys(moto.client())
    # The retry uploaded what was packaged; it did not package again.
    assert srv.logs().count(f"stream={sid} packaging recording") == 1
    assert f"stream={sid} recording already packaged" in srv.logs()


def test_restart_resumes_a_pending_upload(moto: MotoServer, tmp_path: Path) -> None:
    srv = make_server(tmp_path, moto.server_env(BUCKET, **FAST_RETRIES)).start()
    try:
        token = srv.user_token("s3restart")
        moto.stop()
        try:
            sid = _fake_session(srv, token, _good_segments)
            wait_for(
                lambda: "waiting for object storage" in (recording(srv, sid)["status_reason"] or ""),
                60,
                message="waiting for the store",
            )
            assert srv.stop() == 0
        finally:
            ensure_up(moto)
        srv.start()
        rec = wait_status(srv, sid, "ready")
        assert rec["storage"] == "object_storage"
        assert f"recordings/{sid}/video.mp4" in keys(moto.client())
        local_copies_removed(srv, sid)
    finally:
        srv.stop()


def _serve_fails(srv: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamplat", "serve", "--data-dir", str(srv.data_dir)],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=srv.data_dir.parent,
    )


def test_unusable_store_at_start_is_a_clear_error(moto: MotoServer, tmp_path: Path) -> None:
    dead = MotoServer(tmp_path / "unused.log")  # a free port nobody listens on
    srv = make_server(tmp_path, dead.server_env(BUCKET), name="dead")
    out = _serve_fails(srv)
    assert out.returncode == 1
    assert f"cannot start: object storage unreachable at {dead.endpoint}" in out.stderr

    srv = make_server(tmp_path, moto.server_env("no-such-bucket"), name="nobucket")
    out = _serve_fails(srv)
    assert out.returncode == 1
    assert f"bucket 'no-such-bucket' at {moto.endpoint} does not exist" in out.stderr

    srv = make_server(
        tmp_path,
        {**moto.server_env("made-at-start", create_bucket="true"), "AWS_SECRET_ACCESS_KEY": ""},
        name="nosecret",
    )
    out = _serve_fails(srv)
    assert out.returncode == 1 and "AWS_SECRET_ACCESS_KEY is not set" in out.stderr
    # The secret never shows up, whatever went wrong.
    assert "streamplat-test-secret" not in out.stderr

    srv = make_server(tmp_path, moto.server_env("made-at-start", create_bucket="true"), name="create")
    srv.start()
    try:
        assert "made-at-start" in {b["Name"] for b in moto.client().list_buckets()["Buckets"]}
        assert "streamplat-test-secret" not in srv.logs()
    finally:
        assert srv.stop() == 0


def test_multipart_upload_is_confirmed_by_size_and_etag(moto: MotoServer, tmp_path: Path) -> None:
    mib = 1 << 20
    settings = ObjectStorageSettings(
        endpoint_url=moto.endpoint,
        bucket=BUCKET,
        key_prefix="direct/",
        multipart_threshold_bytes=5 * mib,
        multipart_chunk_bytes=5 * mib,
    )
    store = ObjectStore(settings, CREDENTIALS)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(12 * mib + 12345))  # three parts, the last one short

    async def scenario() -> None:
        await store.open()
        stored = await store.upload(big, store.key("s", "video.mp4"), "video/mp4")
        assert stored.size == big.stat().st_size and stored.etag.endswith("-3")
        # A HEAD that disagrees with the local file is a failed upload, never a confirmed one.
        with pytest.raises(ObjectStorageError, match="corrupted"):
            await asyncio.to_thread(store._confirm_sync, stored.key, stored.size, "0" * 32 + "-3")
        with pytest.raises(ObjectStorageError, match="instead of"):
            await asyncio.to_thread(store._confirm_sync, stored.key, stored.size + 1, stored.etag)

    try:
        asyncio.run(scenario())
        data = moto.client().get_object(Bucket=BUCKET, Key="direct/s/video.mp4")["Body"].read()
        assert data == big.read_bytes()
        url = asyncio.run(store.presigned_url("direct/s/video.mp4"))
        tail = httpx.get(url, headers={"Range": "bytes=-1000"})
        assert tail.status_code == 206 and tail.content == data[-1000:]
        assert httpx.head(store.presign_now("direct/s/video.mp4", head=True)).status_code == 200
        # Reused while half its life is left: one signature per recording, not per play.
        assert asyncio.run(store.presigned_url("direct/s/video.mp4")) == url
    finally:
        store.close()


def test_local_recordings_stay_served_when_the_store_is_configured_later(
    moto: MotoServer, tmp_path: Path
) -> None:
    srv = make_server(tmp_path).start()  # no object storage yet
    try:
        token = srv.user_token("s3later")
        local_sid = _fake_session(srv, token, _good_segments)
        assert wait_status(srv, local_sid, "ready")["storage"] == "local"
        local_bytes = srv.vod.get(f"/api/v1/recordings/{local_sid}/video").content
        assert srv.stop() == 0
        srv.env.update(moto.server_env(BUCKET))
        srv.start()
        token = srv.login("s3later")["access_token"]
        r = srv.vod.get(f"/api/v1/recordings/{local_sid}/video")
        assert r.status_code == 200 and r.content == local_bytes  # still from the disk
        stored_sid = _fake_session(srv, token, _good_segments)
        assert wait_status(srv, stored_sid, "ready")["storage"] == "object_storage"
        assert srv.vod.get(f"/api/v1/recordings/{stored_sid}/video").status_code == 302
        # Without the store configured, a stored recording says why it cannot be served.
        assert srv.stop() == 0
        for key in [k for k in srv.env if k.startswith("STREAMPLAT_OBJECT_STORAGE__")]:
            del srv.env[key]
        srv.start()
        assert_error(srv.vod.get(f"/api/v1/recordings/{stored_sid}/video"), 503, "not configured")
        assert srv.vod.get(f"/api/v1/recordings/{local_sid}/video").status_code == 200
        assert_error(
            srv.vod.delete(f"/api/v1/recordings/{stored_sid}", headers=bearer(token)), 503, "not configured"
        )
        assert recording(srv, stored_sid)["status"] == "ready"
    finally:
        srv.stop()


def test_store_killed_in_the_middle_of_a_multipart_upload(moto: MotoServer, tmp_path: Path) -> None:
    mib = 1 << 20
    settings = ObjectStorageSettings(
        endpoint_url=moto.endpoint,
        bucket=BUCKET,
        key_prefix="killed/",
        multipart_threshold_bytes=5 * mib,
        multipart_chunk_bytes=5 * mib,
        max_concurrency=1,  # one part at a time: the kill lands between parts
    )
    store = ObjectStore(settings, CREDENTIALS)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(60 * mib))
    log_start = moto.log_path.stat().st_size

    def part_received() -> bool:
        with moto.log_path.open("rb") as f:
            f.seek(log_start)
            return b"partNumber=1" in f.read()

    async def scenario() -> None:
        await store.open()
        upload = asyncio.ensure_future(store.upload(big, "killed/v.mp4", "video/mp4"))
        # Kill the store as soon as it has taken the first part (not timed: the log says when).
        await asyncio.to_thread(wait_for, part_received, 60, 0.05, "the first part")
        moto.stop()
        with pytest.raises(ObjectStorageError, match=f"unreachable at {re.escape(moto.endpoint)}"):
            await upload
        assert big.stat().st_size == 60 * mib  # the local file is untouched

    try:
        asyncio.run(scenario())
    finally:
        ensure_up(moto)
        store.close()
    # The store came back empty (moto keeps nothing): the same upload now completes and confirms.
    store = ObjectStore(settings, CREDENTIALS)

    async def again() -> None:
        await store.open()
        stored = await store.upload(big, "killed/v.mp4", "video/mp4")
        assert stored.size == 60 * mib and stored.etag.endswith("-12")

    try:
        asyncio.run(again())
    finally:
        store.close()


def test_retry_wakes_an_upload_waiting_out_its_backoff(
    moto: MotoServer, server_factory: Callable[..., ServerProcess]
) -> None:
    srv = server_factory(moto.server_env(BUCKET, retry_base_seconds="3000", retry_max_seconds="3000"))
    token = srv.user_token("s3wake")
    moto.stop()
    try:
        sid = _fake_session(srv, token, _good_segments)
        rec = wait_for(
            lambda: "next in 3000 s" in (recording(srv, sid)["status_reason"] or "") and recording(srv, sid),
            60,
            message="a long backoff",
        )
        assert rec["status"] == "processing"
    finally:
        ensure_up(moto)
    other = srv.user_token("s3wake2")
    assert_error(srv.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(other)), 403)
    r = srv.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token))
    assert r.status_code == 202 and r.json()["status"] == "processing", r.text
    rec = wait_status(srv, sid, "ready", timeout=60)  # not 3000 s later
    assert rec["storage"] == "object_storage"
    assert_error(srv.vod.post(f"/api/v1/recordings/{sid}/retry", headers=bearer(token)), 409)
