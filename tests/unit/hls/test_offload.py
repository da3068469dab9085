"""hls.offload and the store's live side: live files uploaded as they become durable, an outage and
a full queue survived, files restored for a recording, against moto's real S3 HTTP server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.media import wait_for
from tests.support.s3 import CREDENTIALS, MotoServer, running_moto
from tests.unit.hls.test_disk import record

from streamplat.config import ObjectStorageSettings
from streamplat.hls.cutter import Cutter
from streamplat.hls.disk import DiskWriter, finalise_index, scan
from streamplat.hls.offload import LiveOffload
from streamplat.vod.objectstore import ObjectStorageError, ObjectStore, StoredObject, restore_live_media

BUCKET = "live-unit"


@pytest.fixture(name="moto", scope="module")
def fixture_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        yield moto


def make_store(moto: MotoServer) -> ObjectStore:
    settings = ObjectStorageSettings(
        endpoint_url=moto.endpoint, bucket=BUCKET, retry_base_seconds=0.05, retry_max_seconds=0.2
    )
    return ObjectStore(settings, CREDENTIALS)


def live_objects(moto: MotoServer, stream_id: str) -> dict[str, bytes]:
    client = moto.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"live/{stream_id}/").get("Contents", [])
    return {
        o["Key"].rsplit("/", 1)[1]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listed
    }


async def until(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll until `check()` holds (a guard against hanging, not a timed assertion)."""
    await asyncio.to_thread(wait_for, check, limit, 0.02, what)


def local_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


def test_live_files_are_uploaded_as_they_become_durable(
    moto: MotoServer, tmp_path: Path, fmp4_av: bytes
) -> None:
    store = make_store(moto)

    async def scenario() -> LiveOffload:
        await store.open()
        async with LiveOffload(store) as offload:
            writer = DiskWriter(tmp_path, scan(tmp_path), offload.open("s1", tmp_path))
            done = record(tmp_path, fmp4_av, Cutter(), writer)
            await asyncio.to_thread(writer.close)
            names = {"init_1.mp4", *(f"seg_{run}_{msn}.m4s" for run, msn, _ in done)}
            # Every init and segment reaches the store without the stream doing anything more.
            await until(lambda: offload.uploaded >= len(names), "segments uploaded")
            assert set(live_objects(moto, "s1")) == names  # no index yet: it goes up at the end
            assert len(offload.lags) == len(names) and all(lag >= 0 for lag in offload.lags)
            # The stream stops: its ended index follows the last segment, then the task ends.
            await asyncio.to_thread(finalise_index, tmp_path)
            offload.end("s1")
            await until(lambda: offload.queued() == 0 and "s1" not in offload._streams, "uploads ended")
            assert live_objects(moto, "s1") == local_files(tmp_path)
            assert offload.failed == 0 and offload.dropped == 0
            return offload

    try:
        offload = asyncio.run(scenario())
    finally:
        store.close()
    metrics = {m.name: m for m in offload.collect()}
    uploaded = {s.labels.get("outcome"): s.value for s in metrics["streamplat_live_uploads"].samples}
    assert uploaded["uploaded"] == offload.uploaded and uploaded["dropped"] == 0
    assert metrics["streamplat_live_upload_bytes"].samples[0].value == sum(
        len(b) for b in local_files(tmp_path).values()
    )
    lag_count = [
        s for s in metrics["streamplat_live_upload_lag_seconds"].samples if s.name.endswith("_count")
    ]
    assert lag_count[0].value == len(offload.lags)


def test_a_file_seen_by_a_catch_up_and_by_the_writer_is_put_once(moto: MotoServer, tmp_path: Path) -> None:
    """A catch-up can list a file between its rename and the writer's notice of it (CI saw the
    bytes counter run ahead of the files): the name comes twice and goes up once, lag measured."""
    store = make_store(moto)
    (tmp_path / "init_1.mp4").write_bytes(b"i" * 100)
    (tmp_path / "seg_1_0.m4s").write_bytes(b"s" * 1000)

    async def scenario() -> LiveOffload:
        await store.open()
        async with LiveOffload(store) as offload:
            hook = offload.open("s5", tmp_path)
            uploads = offload._streams["s5"]
            # The first catch-up queues both files it finds on disk; the notice of the first
            # comes after it went up, of the second while it is queued, going up or just put.
            await until(lambda: offload.uploaded >= 1, "the first file put")
            hook("init_1.mp4")
            hook("seg_1_0.m4s")
            await until(lambda: offload.uploaded >= 2 and len(offload.lags) == 2, "both lags measured")
            assert uploads.sent.keys() == {"init_1.mp4", "seg_1_0.m4s"} and not uploads.pending
            # A file the store lost is put again by the next catch-up, not skipped as sent.
            moto.client().delete_object(Bucket=BUCKET, Key="live/s5/seg_1_0.m4s")
            uploads.catch_up = True
            uploads.wake.set()
            await until(lambda: offload.uploaded == 3, "the lost file put again")
            assert live_objects(moto, "s5") == local_files(tmp_path)
            await offload.discard("s5")
            return offload

    try:
        offload = asyncio.run(scenario())
    finally:
        store.close()
    assert offload.uploaded == 3 and offload.uploaded_bytes == 100 + 1000 + 1000
    assert all(lag >= 0 for lag in offload.lags) and len(offload.lags) == 2


def test_outage_and_full_queue_are_counted_then_caught_up(
    moto: MotoServer, tmp_path: Path, fmp4_av: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(moto)
    caplog.set_level(logging.INFO, "streamplat.hls.offload")

    async def scenario() -> None:
        await store.open()
        async with LiveOffload(store, queue_size=1) as offload:
            hook = offload.open("s2", tmp_path)
            await until(lambda: not offload._streams["s2"].catch_up, "the first catch-up")
            moto.stop()
            try:
                writer = DiskWriter(tmp_path, scan(tmp_path), hook)
                cutter = Cutter()
                for _ in range(2):  # two runs: 2 inits, 4 segments
                    record(tmp_path, fmp4_av, cutter, writer)
                await asyncio.to_thread(writer.close)  # the writer never waits for the store
                assert writer.failed is None
                await until(lambda: offload.dropped > 0 and offload.failed > 0, "drops and failures")
                assert "live upload queue full (1 files waiting)" in caplog.text
                assert "upload of live/s2/init_1.mp4 failed: object storage unreachable" in caplog.text
            finally:
                moto.start()
                moto.client().create_bucket(Bucket=BUCKET)
            # Back: the queued files go up, then the catch-up finds the dropped ones on disk.
            media = local_files(tmp_path)
            del media["stream.m3u8"]  # the index goes up when the stream ends
            await until(lambda: set(live_objects(moto, "s2")) == set(media), "caught up", limit=60)
            assert live_objects(moto, "s2") == media
            assert "live uploads resumed after" in caplog.text and "catching up" in caplog.text
            # Discarding waits for the upload in flight and ends the stream's task.
            await offload.discard("s2")
            assert "s2" not in offload._streams

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_restore_downloads_what_the_media_dir_lacks(moto: MotoServer, tmp_path: Path, fmp4_av: bytes) -> None:
    source = tmp_path / "node-a"
    source.mkdir()
    writer = DiskWriter(source, scan(source))
    record(source, fmp4_av, Cutter(), writer)
    writer.close()
    finalise_index(source)
    media = local_files(source)
    client = moto.client()
    for name, data in media.items():
        client.put_object(Bucket=BUCKET, Key=f"live/s3/{name}", Body=data)
    # Names that are not the layout's are never written anywhere (no path from a key).
    for odd in ("notes.txt", "sub/seg_1_7.m4s", "../seg_1_8.m4s", "seg_01_9.m4s"):
        client.put_object(Bucket=BUCKET, Key=f"live/s3/{odd}", Body=b"not a live file")
    client.put_object(Bucket=BUCKET, Key="live/s3x/seg_1_0.m4s", Body=b"another stream")
    store = make_store(moto)
    dest = tmp_path / "node-b" / "s3"

    async def scenario() -> None:
        await store.open()
        # The media dir does not exist here (the stream was ingested on a node now dead).
        assert await restore_live_media(store, "s3", dest) == len(media)
        assert local_files(dest) == media
        # Only what is missing, or differs in size (a segment cut short by a crash), is fetched.
        segments = sorted(n for n in media if n.startswith("seg_"))
        (dest / segments[0]).unlink()
        (dest / segments[1]).write_bytes(media[segments[1]][:100])
        assert await restore_live_media(store, "s3", dest) == 2
        assert local_files(dest) == media
        assert await restore_live_media(store, "nothing-here", tmp_path / "empty") == 0

        # A download that does not match what was listed is refused and leaves no file behind.
        stored = StoredObject(f"live/s3/{segments[0]}", len(media[segments[0]]) + 1, "")
        with pytest.raises(ObjectStorageError, match="instead of"):
            await asyncio.to_thread(store.download_sync, stored, tmp_path / "bad.m4s")
        stored = StoredObject(f"live/s3/{segments[0]}", len(media[segments[0]]), "0" * 32)
        with pytest.raises(ObjectStorageError, match="does not match its ETag"):
            await asyncio.to_thread(store.download_sync, stored, tmp_path / "bad.m4s")
        left = await asyncio.to_thread(
            lambda: [p for p in tmp_path.iterdir() if p.suffix in (".m4s", ".tmp")]
        )
        assert not left

        # Deleting a stream's live objects leaves every other stream's.
        assert not (tmp_path / "node-b" / "seg_1_8.m4s").exists() and not (dest / "sub").exists()
        assert await store.delete_prefix(store.live_prefix("s3")) == len(media) + 4
        assert live_objects(moto, "s3") == {} and live_objects(moto, "s3x") != {}

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_store_down_restore_is_an_error_not_an_empty_result(moto: MotoServer, tmp_path: Path) -> None:
    store = make_store(moto)

    async def scenario() -> None:
        await store.open()
        moto.stop()
        try:
            # "Nothing to restore" would let the job fail the recording as "no media".
            with pytest.raises(ObjectStorageError, match="unreachable"):
                await restore_live_media(store, "s4", tmp_path / "s4")
        finally:
            moto.start()
            moto.client().create_bucket(Bucket=BUCKET)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
