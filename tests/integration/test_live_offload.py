"""Live segments in object storage (issue 12 part 2), with a real server, FFmpeg over SRT and moto.

While a stream is live its init and segments appear in the bucket; a store outage mid-stream
costs the stream nothing; a node that dies leaves enough in the bucket to package the recording
elsewhere; and the live objects go once the recording is ready.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from streamplat.config import ObjectStorageSettings
from streamplat.db import create_engine, session_factory
from streamplat.events import EventBus
from streamplat.hls.disk import segment_duration
from streamplat.streams.models import Stream
from streamplat.vod import RecordingService
from streamplat.vod.models import OBJECT_STORAGE, READY, Recording
from streamplat.vod.objectstore import ObjectStore
from tests.integration.test_auth import bearer
from tests.integration.test_object_storage import BUCKET, FAST_RETRIES, ensure_up, keys, wait_status
from tests.integration.test_streams import LIVE_ENV, create, publish, start, status_of
from tests.support.media import FFMPEG, Publisher, decode_errors, probe, wait_for
from tests.support.s3 import CREDENTIALS, MotoServer, running_moto
from tests.support.server import ServerProcess, make_server, running_server

SEGMENT = re.compile(r"seg_(\d+)_(\d+)\.m4s")


@pytest.fixture(name="moto", scope="module")
def fixture_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        yield moto


@pytest.fixture(name="server", scope="module")
def fixture_offload_server(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoServer
) -> Iterator[ServerProcess]:
    env = {**LIVE_ENV, **moto.server_env(BUCKET, **FAST_RETRIES)}
    with running_server(tmp_path_factory.mktemp("offload"), env) as srv:
        yield srv


def live_keys(moto: MotoServer, sid: str) -> dict[str, int]:
    """The stream's live objects: file name -> size."""
    listed = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=f"live/{sid}/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed}


def stored_segments(moto: MotoServer, sid: str) -> list[str]:
    return sorted(
        (n for n in live_keys(moto, sid) if SEGMENT.fullmatch(n)), key=lambda n: int(n.split("_")[2][:-4])
    )


def local_segments(server: ServerProcess, sid: str) -> list[str]:
    folder = server.data_dir / "hls" / sid
    return [p.name for p in folder.iterdir() if SEGMENT.fullmatch(p.name)] if folder.is_dir() else []


def metric(server: ServerProcess, name: str) -> float:
    text = server.main.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def go_live(
    server: ServerProcess, publishers: list[Publisher], user: str, seconds: float
) -> tuple[str, str, Publisher]:
    token = server.user_token(user)
    sid = create(server, token)["stream_id"]
    pub = publish(publishers, start(server, token, sid)["srt_url"], duration=seconds)
    wait_for(lambda: status_of(server, token, sid) == "active", 15, message="active")
    return token, sid, pub


def stop(server: ServerProcess, token: str, sid: str, pub: Publisher, seconds: float) -> None:
    pub.wait(seconds + 20)
    wait_for(lambda: status_of(server, token, sid) == "waiting", 20, message="publisher finished")
    assert server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)).status_code == 200


def wait_status_any(server: ServerProcess, sid: str) -> dict[str, Any]:
    r = server.vod.get(f"/api/v1/recordings/{sid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def moto_settings(moto: MotoServer) -> ObjectStorageSettings:
    return ObjectStorageSettings(
        endpoint_url=moto.endpoint, bucket=BUCKET, retry_base_seconds=0.3, retry_max_seconds=1
    )


def test_live_segments_reach_the_bucket_while_live_and_go_once_ready(
    server: ServerProcess, moto: MotoServer, publishers: list[Publisher]
) -> None:
    token, sid, pub = go_live(server, publishers, "offload1", 8)
    # Segments show up in the bucket while the publisher is still sending.
    wait_for(lambda: len(stored_segments(moto, sid)) >= 2, 30, 0.1, "segments in the bucket")
    assert pub.proc is not None and pub.proc.poll() is None
    assert status_of(server, token, sid) == "active"
    stored = live_keys(moto, sid)
    assert "init_1.mp4" in stored
    folder = server.data_dir / "hls" / sid
    s3 = moto.client()
    for name in ["init_1.mp4", *stored_segments(moto, sid)]:
        body = s3.get_object(Bucket=BUCKET, Key=f"live/{sid}/{name}")
        assert body["Body"].read() == (folder / name).read_bytes()  # the very bytes on disk
    assert metric(server, 'streamplat_live_uploads_total{outcome="uploaded"}') >= 3
    assert metric(server, "streamplat_live_upload_lag_seconds_count") >= 3

    stop(server, token, sid, pub, 8)
    rec = wait_status(server, sid, "ready")
    assert rec["storage"] == "object_storage" and abs(rec["duration_seconds"] - 8) <= 1
    # Once ready, the live copies go from the bucket too (the recording holds them all).
    wait_for(lambda: not live_keys(moto, sid), 30, 0.1, "live objects deleted")
    assert f"recordings/{sid}/video.mp4" in keys(s3)
    assert f"stream={sid} deleted" in server.logs() and "live objects" in server.logs()
    # A live object left behind (the store refused the delete at ready time) goes with the recording.
    s3.put_object(Bucket=BUCKET, Key=f"live/{sid}/seg_1_999.m4s", Body=b"left over")
    assert server.vod.delete(f"/api/v1/recordings/{sid}", headers=bearer(token)).status_code == 200
    assert not live_keys(moto, sid) and not {k for k in keys(s3) if sid in k}


def test_store_outage_mid_stream_costs_the_stream_nothing(
    server: ServerProcess, moto: MotoServer, publishers: list[Publisher]
) -> None:
    token, sid, pub = go_live(server, publishers, "offload2", 10)
    wait_for(lambda: stored_segments(moto, sid), 30, 0.1, "a segment in the bucket")
    failed_before = metric(server, 'streamplat_live_uploads_total{outcome="failed"}')
    moto.stop()
    try:
        wait_for(
            lambda: re.search(
                rf"stream={sid} upload of live/{sid}/\S+ failed: object storage unreachable", server.logs()
            ),
            30,
            0.1,
            "a failed live upload logged",
        )
        # The stream goes on writing segments to disk while the store is away.
        on_disk = len(local_segments(server, sid))
        wait_for(lambda: len(local_segments(server, sid)) > on_disk + 1, 30, 0.1, "more segments on disk")
        assert status_of(server, token, sid) == "active"
        assert metric(server, 'streamplat_live_uploads_total{outcome="failed"}') > failed_before
        stop(server, token, sid, pub, 10)
        # The recording is packaged from the disk with the store still down, then waits to upload.
        rec = wait_for(
            lambda: (
                "waiting for object storage" in ((r := wait_status_any(server, sid))["status_reason"] or "")
                and r
            ),
            60,
            0.3,
            "packaged, waiting for the store",
        )
        assert rec["status"] == "processing" and rec["file_size_bytes"]
        assert f"stream={sid} cannot look for live files in object storage" in server.logs()
    finally:
        ensure_up(moto)
    rec = wait_status(server, sid, "ready")
    assert rec["storage"] == "object_storage" and abs(rec["duration_seconds"] - 10) <= 1
    wait_for(lambda: not live_keys(moto, sid), 30, 0.1, "live objects deleted")


def test_recording_of_a_dead_node_is_packaged_from_the_store_alone(
    moto: MotoServer, publishers: list[Publisher], tmp_path: Path
) -> None:
    srv = make_server(tmp_path, {**LIVE_ENV, **moto.server_env(BUCKET, **FAST_RETRIES)}, name="node-a")
    srv.start()
    try:
        _, sid, pub = go_live(srv, publishers, "offload3", 30)
        wait_for(lambda: len(stored_segments(moto, sid)) >= 4, 60, 0.1, "four segments in the bucket")
    finally:
        srv.kill()  # the node dies mid-stream: SIGKILL, no stop, no recording made there
    pub.kill()
    # Its disk is gone with it: what is left is the database row and the bucket.
    hls_dir = srv.data_dir / "hls" / sid
    on_disk = local_segments(srv, sid)
    shutil.rmtree(hls_dir)
    s3 = moto.client()
    init = s3.get_object(Bucket=BUCKET, Key=f"live/{sid}/init_1.mp4")["Body"].read()
    in_store = stored_segments(moto, sid)
    # Only complete segments went up (how far behind the disk they were is bench/object_storage.py's).
    assert len(in_store) >= 4 and set(in_store) <= set(on_disk), (in_store, on_disk)
    published = sum(
        segment_duration(init, s3.get_object(Bucket=BUCKET, Key=f"live/{sid}/{n}")["Body"].read())
        for n in in_store
    )

    # A damaged object (here: garbage under a segment's name) is skipped like a damaged segment.
    last = SEGMENT.fullmatch(in_store[-1])
    assert last is not None
    s3.put_object(
        Bucket=BUCKET, Key=f"live/{sid}/seg_1_{int(last.group(2)) + 1}.m4s", Body=b"\0garbage" * 100
    )

    # What a surviving node does (nodes' recovery): stage the recording with a media dir it
    # does not have, and let its recording workers package it.
    survivor = tmp_path / "node-b"
    store = ObjectStore(moto_settings(moto), CREDENTIALS)

    async def recover() -> Recording:
        engine = create_engine(f"sqlite+aiosqlite:///{srv.data_dir / 'streamplat.db'}")
        sessions = session_factory(engine)
        try:
            await store.open()
            service = RecordingService(
                sessions, EventBus(), FFMPEG, survivor / "recordings", workers=1, store=store
            )
            async with sessions() as session:
                stream = await session.scalar(select(Stream).where(Stream.id == sid))
                assert stream is not None
                media_dir = survivor / "hls" / sid
                assert await service.stage_recording(
                    session, stream_id=sid, user_id=stream.user_id, title=stream.title, media_dir=media_dir
                )
                await session.commit()
            async with service:  # picks up the "processing" row at start

                async def ready() -> Recording:
                    while True:
                        async with sessions() as session:
                            rec = await session.scalar(select(Recording).where(Recording.stream_id == sid))
                            assert rec is not None and rec.status != "failed", rec and rec.error
                        # Ready, and the job's clean-up of the live objects done (it follows the
                        # ready event; leaving the service would cancel it).
                        if rec.status == READY and not await asyncio.to_thread(live_keys, moto, sid):
                            return rec
                        await asyncio.sleep(0.2)

                rec = await asyncio.wait_for(ready(), 120)
            # Left-overs (a shutdown right after "ready"): the next start deletes a ready
            # recording's live objects, and keeps those of a stream with no ready recording
            # (live on another node).
            s3.put_object(Bucket=BUCKET, Key=f"live/{sid}/seg_1_0.m4s", Body=b"left over")
            s3.put_object(Bucket=BUCKET, Key="live/live-elsewhere/seg_1_0.m4s", Body=b"in use")
            async with RecordingService(sessions, EventBus(), FFMPEG, survivor / "recordings", store=store):
                await asyncio.to_thread(wait_for, lambda: not live_keys(moto, sid), 30, 0.1, "swept")
            assert live_keys(moto, "live-elsewhere")
            return rec
        finally:
            store.close()
            await engine.dispose()

    rec = asyncio.run(recover())
    assert rec.storage == OBJECT_STORAGE
    assert rec.duration_seconds is not None and abs(rec.duration_seconds - published) <= 0.5
    video = tmp_path / "video.mp4"
    video.write_bytes(s3.get_object(Bucket=BUCKET, Key=f"recordings/{sid}/video.mp4")["Body"].read())
    info = probe(video)
    assert info.video == "h264" and info.audio == "aac"
    assert info.duration is not None and abs(info.duration - published) <= 0.5
    assert decode_errors(video) == ""
    # Ready: the restored copy on the survivor's disk is gone too (the live objects: see ready()).
    assert not (survivor / "hls" / sid).exists()
