"""GET /metrics, structured logs and the disk floor, on a real server with real FFmpeg."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_auth import assert_error, bearer
from tests.support.media import Publisher, wait_for
from tests.support.server import SERVICES, ServerProcess, running_server

LIVE_ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60",
    "STREAMPLAT_LOGGING__FORMAT": "json",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(name="server", scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("metrics"), LIVE_ENV, db=db) as srv:
        yield srv


def scrape(server: ServerProcess) -> Samples:
    r = server.main.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, service: str, route: str, method: str, status: str) -> float:
    labels = {"service": service, "route": route, "method": method, "status": status}
    return value(samples, "streamplat_http_requests_total", **labels)


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]


def test_metrics_move_with_requests_streams_and_recordings(
    server: ServerProcess, publishers: list[Publisher]
) -> None:
    token = server.user_token("metricsuser")
    before = scrape(server)
    r = server.main.post("/api/streams", json={"name": "Measured"}, headers=bearer(token))
    sid = r.json()["stream_id"]
    started = server.main.post(f"/api/streams/{sid}/start", headers=bearer(token)).json()
    assert server.main.get("/no/such/page").status_code == 404
    assert server.stream.get(f"/stream/{sid}/status").status_code == 200

    live = scrape(server)
    start_route = "/api/streams/{stream_id}/start"
    starts = requests(live, "main-app", start_route, "POST", "200")
    assert starts == requests(before, "main-app", start_route, "POST", "200") + 1
    assert requests(live, "main-app", "unmatched", "GET", "404") >= 1
    assert requests(live, "stream-app", "/stream/{stream_id}/status", "GET", "200") >= 1
    assert requests(live, "auth-service", "/auth/login", "POST", "200") >= 1
    timed = {"service": "main-app", "route": start_route, "method": "POST"}
    assert value(live, "streamplat_http_request_duration_seconds_count", **timed) == starts
    # Route templates only: no label anywhere carries a raw path with the stream id in it.
    http_labels = [labels for name, labels in live if name.startswith("streamplat_http")]
    assert not [labels for labels in http_labels if any(sid in v for _, v in labels)]
    waiting_before = value(before, "streamplat_streams_live", status="waiting")
    assert value(live, "streamplat_streams_live", status="waiting") == waiting_before + 1
    assert value(live, "streamplat_stream_viewers", stream_id=sid) == 0
    assert value(live, "streamplat_data_dir_free_bytes") > 0
    assert value(live, "streamplat_data_dir_min_free_bytes") == 1 << 30

    publishers.append(Publisher(started["srt_url"], duration=4).start())
    wait_for(
        lambda: value(scrape(server), "streamplat_ingest_bitrate_kbps", stream_id=sid) > 0,
        20,
        message="bitrate of the live stream",
    )
    assert value(scrape(server), "streamplat_streams_live", status="active") >= 1
    # The publisher ends after 4 s; the listener restarts to wait for it to come back.
    wait_for(
        lambda: value(scrape(server), "streamplat_ingest_ffmpeg_restarts_total") >= 1,
        20,
        message="a listener restart",
    )
    assert value(scrape(server), "streamplat_ingest_publisher_disconnects_total") >= 1
    assert server.main.post(f"/api/streams/{sid}/stop", headers=bearer(token)).status_code == 200
    wait_for(
        lambda: server.vod.get(f"/api/v1/recordings/{sid}").json()["status"] == "ready",
        60,
        message="recording ready",
    )

    after = scrape(server)
    assert value(after, "streamplat_streams_live", status="waiting") == waiting_before
    assert ("streamplat_ingest_bitrate_kbps", frozenset({("stream_id", sid)})) not in after
    assert ("streamplat_stream_viewers", frozenset({("stream_id", sid)})) not in after
    ready_before = value(before, "streamplat_vod_jobs_total", outcome="ready")
    # The job is counted just after its "ready" is committed: a scrape may fall in between.
    wait_for(
        lambda: value(scrape(server), "streamplat_vod_jobs_total", outcome="ready") == ready_before + 1,
        10,
        message="the ready job counted",
    )
    after = scrape(server)
    assert value(after, "streamplat_vod_job_duration_seconds_count", outcome="ready") == ready_before + 1
    assert value(after, "streamplat_vod_job_duration_seconds_sum", outcome="ready") > 0

    # Structured logs: every request line has its request id; ingest and VOD lines their stream id.
    lines = json_lines(server)
    access = [line for line in lines if line["logger"] == "streamplat.access"]
    assert access and all(len(line.get("request_id", "")) >= 16 for line in access)
    for logger in ("streamplat.ingest.supervisor", "streamplat.vod.packaging", "streamplat.vod.services"):
        mine = [line for line in lines if line["logger"] == logger and sid in line["message"]]
        assert mine and all(line.get("stream_id") == sid for line in mine), logger
    # The FFmpeg listener outlives the start request: its lines do not claim that request's id.
    start_line = f"POST /api/streams/{sid}/start"
    start_id = next(line["request_id"] for line in access if line["message"].startswith(start_line))
    listening = [line for line in lines if "listening" in line["message"] and line.get("stream_id") == sid]
    assert listening and not [line for line in listening if line.get("request_id") == start_id]


def test_disk_floor_refuses_new_streams_and_health_says_degraded(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory({"STREAMPLAT_STORAGE__MIN_FREE_BYTES": str(10**18)})
    for service in SERVICES:
        r = srv.client(service).get("/health")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded", body
        assert "storage.min_free_bytes" in body["reason"]
    token = srv.user_token("diskfull")
    sid = srv.main.post("/api/streams", json={"name": "Too big"}, headers=bearer(token)).json()["stream_id"]
    body = assert_error(srv.main.post(f"/api/streams/{sid}/start", headers=bearer(token)), 507, "disk space")
    assert body["error"] == "Insufficient Storage"
    assert srv.main.get(f"/api/streams/{sid}", headers=bearer(token)).json()["status"] == "created"
    samples = scrape(srv)
    free = value(samples, "streamplat_data_dir_free_bytes")
    assert 0 < free < value(samples, "streamplat_data_dir_min_free_bytes")
    # Someone else's stream: the owner check comes first and says nothing about the disk.
    other = srv.user_token("diskother")
    assert_error(srv.main.post(f"/api/streams/{sid}/start", headers=bearer(other)), 403)
