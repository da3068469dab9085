"""Platform metrics from events and requests, read back through the Prometheus text parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamplat.app import Platform
from streamplat.config import load
from streamplat.events import (
    EventBus,
    IngestGaveUp,
    IngestProgress,
    ListenerStarted,
    PublisherDisconnected,
    RecordingFailed,
    RecordingReady,
    StreamStatusChanged,
    ViewerCountChanged,
)
from streamplat.metrics import PlatformMetrics

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: PlatformMetrics) -> Samples:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_live_streams_viewers_and_bitrate_follow_events_and_vanish_on_stop() -> None:
    bus, metrics = EventBus(), PlatformMetrics(lambda: 5_000, 1_000)
    metrics.attach(bus)
    await bus.publish(StreamStatusChanged(A, "waiting", 1))
    await bus.publish(StreamStatusChanged(B, "waiting", 1))
    await bus.publish(StreamStatusChanged(A, "active", 1))
    await bus.publish(ViewerCountChanged(A, 2))
    await bus.publish(IngestProgress(A, 812.5, 30.0, 4.0))
    s = scrape(metrics)
    assert value(s, "streamplat_streams_live", status="waiting") == 1
    assert value(s, "streamplat_streams_live", status="active") == 1
    assert value(s, "streamplat_stream_viewers", stream_id=A) == 2
    assert value(s, "streamplat_stream_viewers", stream_id=B) == 0
    assert value(s, "streamplat_ingest_bitrate_kbps", stream_id=A) == 812.5
    assert value(s, "streamplat_data_dir_free_bytes") == 5_000
    assert value(s, "streamplat_data_dir_min_free_bytes") == 1_000

    await bus.publish(PublisherDisconnected(A, "gone"))
    assert value(scrape(metrics), "streamplat_ingest_bitrate_kbps", stream_id=A) is None
    await bus.publish(StreamStatusChanged(A, "stopped", 1))
    await bus.publish(ViewerCountChanged(A, 0))  # the streams service's last word on a stopped stream
    s = scrape(metrics)
    assert value(s, "streamplat_streams_live", status="active") == 0
    assert value(s, "streamplat_stream_viewers", stream_id=A) is None
    assert value(s, "streamplat_ingest_publisher_disconnects_total") == 1
    metrics.detach(bus)
    await bus.publish(StreamStatusChanged(B, "stopped", 1))
    assert value(scrape(metrics), "streamplat_streams_live", status="waiting") == 1


async def test_restarts_gave_up_and_vod_jobs_are_counted() -> None:
    bus, metrics = EventBus(), PlatformMetrics(lambda: None, 0)
    metrics.attach(bus)
    for restart in (0, 1, 2):
        await bus.publish(ListenerStarted(A, 10001, restart))
    await bus.publish(IngestGaveUp(A, "FFmpeg failed 6 times"))
    await bus.publish(RecordingReady(A, 1, 10.0, "/v.mp4", "/t.jpg", processing_seconds=3.5))
    await bus.publish(RecordingFailed(B, 1, "broken", processing_seconds=0.5))
    await bus.publish(RecordingFailed(B, 1, "broken"))  # no duration known: counted, not timed
    s = scrape(metrics)
    assert value(s, "streamplat_ingest_ffmpeg_restarts_total") == 2
    assert value(s, "streamplat_ingest_gave_up_total") == 1
    assert value(s, "streamplat_vod_jobs_total", outcome="ready") == 1
    assert value(s, "streamplat_vod_jobs_total", outcome="failed") == 2
    assert value(s, "streamplat_vod_job_duration_seconds_count", outcome="ready") == 1
    assert value(s, "streamplat_vod_job_duration_seconds_sum", outcome="ready") == 3.5
    assert value(s, "streamplat_vod_job_duration_seconds_count", outcome="failed") == 1
    assert value(s, "streamplat_data_dir_free_bytes") is None


def test_requests_are_labelled_with_bounded_values() -> None:
    metrics = PlatformMetrics(lambda: 1, 0)
    metrics.observe_request("main-app", "/api/streams/{stream_id}", "GET", 200, 0.02)
    metrics.observe_request("main-app", "/api/streams/{stream_id}", "GET", 200, 0.2)
    metrics.observe_request("stream-app", "unmatched", "BREW", 405, 0.001)
    s = scrape(metrics)
    labels = {"service": "main-app", "route": "/api/streams/{stream_id}", "method": "GET"}
    assert value(s, "streamplat_http_requests_total", status="200", **labels) == 2
    assert value(s, "streamplat_http_request_duration_seconds_count", **labels) == 2
    assert value(s, "streamplat_http_request_duration_seconds_bucket", le="0.025", **labels) == 1
    assert (
        value(
            s,
            "streamplat_http_requests_total",
            service="stream-app",
            route="unmatched",
            method="other",
            status="405",
        )
        == 1
    )


def test_each_platform_has_its_own_registry(tmp_path: Path) -> None:
    settings = load(None, environ={"STREAMPLAT_STORAGE__DATA_DIR": str(tmp_path)})
    one, two = Platform(settings), Platform(settings)
    one.metrics.observe_request("auth-service", "/health", "GET", 200, 0.01)
    labels = {"service": "auth-service", "route": "/health", "method": "GET", "status": "200"}
    assert value(scrape(one.metrics), "streamplat_http_requests_total", **labels) == 1
    assert value(scrape(two.metrics), "streamplat_http_requests_total", **labels) is None


def test_disk_floor(tmp_path: Path) -> None:
    def platform(floor: int) -> Platform:
        return Platform(
            load(
                None,
                environ={
                    "STREAMPLAT_STORAGE__DATA_DIR": str(tmp_path),
                    "STREAMPLAT_STORAGE__MIN_FREE_BYTES": str(floor),
                },
            )
        )

    assert platform(0).storage_problem() is None  # 0: no floor
    assert platform(1).storage_problem() is None and platform(1).health_warning() is None
    problem = platform(10**18).storage_problem()
    assert problem is not None and "storage.min_free_bytes" in problem and str(tmp_path) in problem
    assert platform(10**18).health_warning() == problem
    free = platform(0).free_disk_bytes()
    assert free is not None and free > 0
