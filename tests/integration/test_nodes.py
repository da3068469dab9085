"""Several `streamplat serve` nodes on one PostgreSQL database ([cluster], streamplat.nodes).

Two real servers (node-a, node-b) share the machine's PostgreSQL with short heartbeats (0.5 s,
timeout 5 s) and a moto S3 server (recordings and live segments); real FFmpeg publishes over
SRT to the node that started the stream. The module's
last test SIGKILLs node-a, so the tests run in file order on one pair of servers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.test_auth import bearer
from tests.integration.test_realtime import LIVE_ENV
from tests.support import pg
from tests.support.media import Publisher, ffmpeg_children_listening, wait_for
from tests.support.s3 import MotoServer
from tests.support.server import ServerProcess, make_server

SECRET = "n" * 48
BUCKET = "nodes-test"
CLUSTER_ENV = {
    **LIVE_ENV,
    "STREAMPLAT_AUTH__JWT_SECRET": SECRET,
    "STREAMPLAT_CLUSTER__HEARTBEAT_SECONDS": "0.5",
    # 5 s rather than 3: with the whole suite on 2 cores, a node's event loop can stall for
    # seconds, and a live node found lost would fail the other tests.
    "STREAMPLAT_CLUSTER__NODE_TIMEOUT_SECONDS": "5",
}


@pytest.fixture(name="db", scope="module")
def fixture_db() -> str:
    pg.require()
    return "postgresql"


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    tmp: Path

    moto: MotoServer

    @property
    def database_url(self) -> str:
        return self.a.env["STREAMPLAT_STORAGE__DATABASE_URL"]

    def node(self, name: str, **env: str) -> ServerProcess:
        """Another node on the cluster's database and store (not started)."""
        shared = {
            **CLUSTER_ENV,
            **self.moto.server_env(BUCKET),
            "STREAMPLAT_STORAGE__DATABASE_URL": self.database_url,
        }
        srv = make_server(self.tmp, {**shared, **env}, name=name)
        srv.env["STREAMPLAT_CLUSTER__INTERNAL_STREAM_URL"] = f"http://127.0.0.1:{srv.ports['stream']}"
        return srv


@pytest.fixture(name="cluster", scope="module")
def fixture_cluster(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("nodes")
    moto = MotoServer(tmp / "moto.log").start()
    moto.client().create_bucket(Bucket=BUCKET)
    env = {**CLUSTER_ENV, **moto.server_env(BUCKET), "STREAMPLAT_CLUSTER__NODE_ID": "node-a"}
    a = make_server(tmp, env, name="a", db=db)
    cluster = Cluster(a, a, tmp, moto)
    # node-b names itself "localhost" to the world, so an srt_url tells the nodes apart.
    cluster.b = cluster.node(
        "b", STREAMPLAT_CLUSTER__NODE_ID="node-b", STREAMPLAT_SERVER__PUBLIC_HOST="localhost"
    )
    try:
        a.start()
        cluster.b.start()
        yield cluster
    finally:
        for srv in (cluster.b, a):
            try:
                srv.stop()
            except Exception:
                srv.kill()
        a.drop_database()
        moto.stop()


def clock_ahead(seconds: int) -> dict[str, str]:
    """Environment that runs a process with its wall clock `seconds` ahead (monotonic untouched)."""
    import libfaketime  # type: ignore[import-untyped]

    vendor = Path(libfaketime.__file__).parent / "vendor"
    library = next(vendor.rglob("libfaketime.so.1"))
    return {"LD_PRELOAD": str(library), "FAKETIME": f"+{seconds}s", "DONT_FAKE_MONOTONIC": "1"}


def start_on(srv: ServerProcess, token: str, name: str) -> tuple[str, dict[str, object]]:
    r = srv.main.post("/api/streams", json={"name": name}, headers=bearer(token))
    assert r.status_code == 201, r.text
    sid = r.json()["stream_id"]
    r = srv.main.post(f"/api/streams/{sid}/start", headers=bearer(token))
    assert r.status_code == 200, r.text
    return sid, r.json()


def stream_status(srv: ServerProcess, sid: str, token: str) -> dict[str, object]:
    r = srv.main.get(f"/api/streams/{sid}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_stream_ingested_on_a_is_seen_and_stopped_through_b(
    cluster: Cluster, publishers: list[Publisher]
) -> None:
    a, b = cluster.a, cluster.b
    token = a.user_token("nodes_owner")  # signed by A, accepted by B: one secret
    sid, started = start_on(a, token, "on a")
    port = started["port"]
    assert isinstance(port, int)
    assert str(started["srt_url"]).startswith(f"srt://127.0.0.1:{port}?")
    assert a.sql("SELECT node_id FROM streams WHERE id = ?", sid) == [("node-a",)]
    # Any node answers for any stream; the SRT URL names the node that listens for it.
    assert stream_status(b, sid, token)["srt_url"] == started["srt_url"]
    publishers.append(Publisher(str(started["srt_url"])).start())
    wait_for(lambda: stream_status(b, sid, token)["status"] == "active", 30, message="active via b")

    on_a = a.stream.get(f"/stream/{sid}/status")
    on_b = b.stream.get(f"/stream/{sid}/status")
    assert on_a.status_code == on_b.status_code == 200, on_b.text
    assert set(on_b.json()) == set(on_a.json())
    # B asks A, which alone knows its FFmpeg: a poller behind a balancer sees one truth.
    for reply in (on_a.json(), on_b.json()):
        assert reply["status"] == "active" and reply["ffmpeg_running"] is True, reply
        assert reply["publisher_connected"] is True and reply["hls"] is not None, reply

    # The internal route refuses anyone without the cluster's token, and changes nothing.
    forged = httpx.post(
        a.url("stream", f"/internal/streams/{sid}/stop"),
        json={"reason": "forged"},
        headers={"x-streamplat-internal": "0" * 64},
    )
    assert forged.status_code == 401, forged.text
    assert stream_status(a, sid, token)["status"] == "active"

    r = b.main.post(f"/api/streams/{sid}/stop", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stopped" and r.json()["recording"] is True
    assert stream_status(b, sid, token)["status"] == "stopped"  # not B's cached "active"
    # A, which had the FFmpeg and the media, stopped it and made the one recording.
    assert ffmpeg_children_listening(port) == []
    assert a.stream.get(f"/stream/{sid}/status").json()["ffmpeg_running"] is False
    rows = a.sql("SELECT media_dir FROM recordings WHERE stream_id = ?", sid)
    assert [Path(m) for (m,) in rows] == [a.data_dir.resolve() / "hls" / sid]
    assert b.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)).status_code == 409

    # Deleting a live stream through B ends its listener on A too.
    sid2, started2 = start_on(a, token, "deleted via b")
    r = b.main.delete(f"/api/streams/{sid2}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert ffmpeg_children_listening(int(str(started2["port"]))) == []
    assert a.sql("SELECT id FROM streams WHERE id = ?", sid2) == []
    for srv in (a, b):
        assert "unhandled error" not in srv.logs()


def test_a_node_that_disagrees_with_the_cluster_refuses_to_start(cluster: Cluster) -> None:
    cases = [
        ({"STREAMPLAT_AUTH__JWT_SECRET": "m" * 48}, "auth.jwt_secret differs from the one of the alive node"),
        ({"STREAMPLAT_CLUSTER__NODE_ID": "node-a"}, "another node with node_id 'node-a' is alive"),
        # The process's wall clock 10 s ahead of PostgreSQL's (libfaketime, preloaded).
        (clock_ahead(10), "this machine's clock differs from the database's by 10."),
    ]
    for i, (env, needle) in enumerate(cases):
        srv = cluster.node(f"refused{i}", **env)
        try:
            with pytest.raises(RuntimeError, match="server exited with 1"):
                srv.start()
        finally:
            srv.kill()  # one that started after all must not outlive the test
        assert f"cannot start: {needle}" in srv.logs()
    # A database migrated by newer code than this.
    ahead = make_server(cluster.tmp, CLUSTER_ENV, name="ahead", db="postgresql")
    try:
        ahead.sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        ahead.sql("INSERT INTO alembic_version VALUES ('0099_from_the_future')")
        with pytest.raises(RuntimeError, match="server exited with 1"):
            ahead.start()
        assert "database schema is at revision '0099_from_the_future', newer than this code" in ahead.logs()
    finally:
        ahead.kill()
        ahead.drop_database()
    # The cluster did not notice.
    assert cluster.a.stream.get("/health").status_code == 200


def test_a_node_killed_mid_stream_is_found_lost_and_its_stream_stopped_by_another(
    cluster: Cluster, publishers: list[Publisher]
) -> None:
    a, b = cluster.a, cluster.b
    token = a.user_token("nodes_killed")
    sid, started = start_on(a, token, "killed node")
    publishers.append(Publisher(str(started["srt_url"])).start())
    wait_for(lambda: stream_status(b, sid, token)["status"] == "active", 30, message="active via b")
    s3 = cluster.moto.client()

    def stored_segments() -> int:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"live/{sid}/")
        return sum(1 for o in listed.get("Contents", []) if o["Key"].endswith(".m4s"))

    wait_for(lambda: stored_segments() >= 4, 60, message="4 live segments in the store")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    # Until B notices, A is still the owner B knows of: its silence must not cost a 500.
    r = b.stream.get(f"/stream/{sid}/status")
    assert r.status_code == 200 and r.json()["status"] in ("active", "stopped"), r.text
    # Heartbeat timeout 5 s: B claims node-a and stops the stream.
    final = wait_for(
        lambda: (s := stream_status(b, sid, token))["status"] == "stopped" and s, 30, message="stopped via b"
    )
    assert str(final["status_reason"]).startswith("node lost: node-a"), final
    assert a.sql("SELECT claimed_by FROM nodes WHERE node_id = 'node-a'") == [("node-b",)]
    metrics = b.main.get("/metrics").text
    assert "streamplat_cluster_claims_total 1.0" in metrics
    assert "streamplat_cluster_nodes_alive 1.0" in metrics
    # One recording, staged by B (its media comes back from object storage when configured).
    rows = a.sql("SELECT media_dir FROM recordings WHERE stream_id = ?", sid)
    assert [Path(m) for (m,) in rows] == [b.data_dir.resolve() / "hls" / sid]
    # B packages it from the segments A had put in the store (1 s each) before it died.
    in_store = stored_segments()

    def recording() -> dict[str, object] | None:
        r = b.vod.get(f"/api/v1/recordings/{sid}", headers=bearer(token))
        assert r.status_code == 200, r.text
        body = dict(r.json())
        assert body["status"] != "failed", body
        return body if body["status"] == "ready" else None

    ready = wait_for(recording, 90, message="recording ready via b")
    assert int(str(ready["duration_seconds"])) >= 0.9 * in_store - 1, (ready, in_store)
    assert b.vod.get(f"/api/v1/recordings/{sid}/video", headers=bearer(token)).status_code in (200, 302)
    # node-a restarted with its id (same data directory) takes its row back at once.
    a.start()
    assert a.sql("SELECT claimed_by, left_at FROM nodes WHERE node_id = 'node-a'") == [(None, None)]
    assert stream_status(a, sid, token)["status"] == "stopped"
    assert a.sql("SELECT count(*) FROM recordings WHERE stream_id = ?", sid) == [(1,)]
