"""Schemathesis over the Main App's, Stream App's and VOD's schemas (tests/support/fuzz.py).

The Auth port has a module of its own (test_schemathesis_auth.py), so pytest-xdist runs the two
halves on different workers. The real stream and recording the cases aim at are never deleted
(DELETE only gets generated ids), and the streamer whose token is used is not an admin.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_auth import bearer, create_admin
from tests.support.fuzz import World, fuzz_service
from tests.support.media import Publisher, wait_for
from tests.support.server import running_server

ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "5",
    "STREAMPLAT_STORAGE__MIN_FREE_BYTES": "0",
}


@pytest.fixture(name="world", scope="module")
def fixture_world(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[World]:
    with running_server(tmp_path_factory.mktemp("fuzz"), ENV, db=db) as srv:
        admin = create_admin(srv, "fuzzadmin")
        streamer = srv.user_token("fuzzstreamer")
        victim = srv.register("fuzzvictim", "viewer")
        headers = bearer(streamer)
        stream_id = srv.main.post("/api/streams", json={"name": "Fuzzed"}, headers=headers).json()[
            "stream_id"
        ]
        recorded = srv.main.post("/api/streams", json={"name": "Recorded"}, headers=headers).json()
        started = srv.main.post(f"/api/streams/{recorded['stream_id']}/start", headers=headers).json()
        publisher = Publisher(started["srt_url"], duration=4.0).start()
        try:
            wait_for(
                lambda: (
                    srv.stream.get(f"/stream/{recorded['stream_id']}/status").json()["hls_files_count"] >= 2
                ),
                30,
                message="segments of the recorded stream",
            )
        finally:
            publisher.kill()
        srv.main.post(f"/api/streams/{recorded['stream_id']}/stop", headers=headers)
        wait_for(
            lambda: (
                srv.vod.get(f"/api/v1/recordings/{recorded['stream_id']}").json().get("status") == "ready"
            ),
            60,
            message="the recording to be ready",
        )
        world = World(srv, admin, streamer, int(victim["id"]), stream_id, recorded["stream_id"])
        yield world
        print(f"\nschemathesis cases per port: {world.cases} (total {sum(world.cases.values())})")


@pytest.mark.parametrize("service", ["main", "stream", "vod"])
def test_every_operation_answers_as_its_schema_says(world: World, service: str) -> None:
    fuzz_service(world, service)
    # The fixtures the cases aimed at survived them.
    assert (
        world.server.main.get(f"/api/streams/{world.stream_id}", headers=bearer(world.streamer)).status_code
        == 200
    )
    assert world.server.vod.get(f"/api/v1/recordings/{world.recorded_id}").json()["status"] == "ready"
