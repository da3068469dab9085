"""Prometheus metrics of one platform, served as GET /metrics on the Main App port.

Each `Platform` has a registry of its own (never prometheus_client's global one), so several
platforms in one process (tests) do not clash. Numbers come from two places: the HTTP
middleware of every port (`observe_request`) and the EventBus (everything about streams,
ingest and VOD), so no metric polls the database.

    streamplat_http_requests_total{service,route,method,status}      counter
    streamplat_http_request_duration_seconds{service,route,method}    histogram
        route is the route template (/api/streams/{stream_id}), "unmatched" for unknown paths
    streamplat_streams_live{status="waiting"|"active"}               gauge
    streamplat_stream_viewers{stream_id}                              gauge, live streams only
    streamplat_ingest_bitrate_kbps{stream_id}                         gauge, while media flows
    streamplat_ingest_ffmpeg_restarts_total                           counter
    streamplat_ingest_publisher_disconnects_total                     counter
    streamplat_ingest_gave_up_total                                   counter
    streamplat_vod_jobs_total{outcome="ready"|"failed"}              counter
    streamplat_vod_job_duration_seconds{outcome}                      histogram
    streamplat_data_dir_free_bytes                                    gauge, read at scrape time
    streamplat_data_dir_min_free_bytes                                gauge, storage.min_free_bytes
    streamplat_websocket_clients                                      gauge
    streamplat_websocket_disconnects_total{reason}                    counter
    streamplat_redis_up                                               gauge, only with [redis] url
    streamplat_redis_events_total{outcome="sent"|"received"|"dropped"}   counter, only with [redis] url
    process_*                                                         the server process (CPU, memory, fds)

Per-stream series exist only while the stream is live, so their number is bounded by the
SRT port pool, and a stopped stream's series disappear.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from streamplat.errors import Forbidden, Unauthorized
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

LIVE = ("waiting", "active")
# Anything else a client puts in the request line is folded into "other": label values must
# not be chosen freely by callers.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
VOD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class PlatformMetrics:
    """The platform's Prometheus registry and the instruments in it."""

    def __init__(self, free_disk_bytes: Callable[[], int | None], min_free_bytes: int) -> None:
        """`free_disk_bytes` is read at every scrape; `min_free_bytes` is the configured floor."""
        self.registry = CollectorRegistry()
        r = self.registry
        self._http_requests = Counter(
            "streamplat_http_requests",
            "HTTP requests answered, by port, route template, method and status.",
            ["service", "route", "method", "status"],
            registry=r,
        )
        self._http_duration = Histogram(
            "streamplat_http_request_duration_seconds",
            "Time to answer an HTTP request (body included).",
            ["service", "route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        # (service, route template, method, status) -> that request's counter and histogram.
        self._request_children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._restarts = Counter(
            "streamplat_ingest_ffmpeg_restarts",
            "FFmpeg SRT listeners started again for a live stream (after a drop or a failure).",
            registry=r,
        )
        self._disconnects = Counter(
            "streamplat_ingest_publisher_disconnects",
            "Publishers that went away from a live stream.",
            registry=r,
        )
        self._gave_up = Counter(
            "streamplat_ingest_gave_up",
            "Live streams stopped because FFmpeg kept failing or no publisher came back.",
            registry=r,
        )
        self._vod_jobs = Counter(
            "streamplat_vod_jobs",
            "Recording packaging jobs finished, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._vod_duration = Histogram(
            "streamplat_vod_job_duration_seconds",
            "Time a recording packaging job took, by outcome.",
            ["outcome"],
            buckets=VOD_BUCKETS,
            registry=r,
        )
        self._ws_disconnects = Counter(
            "streamplat_websocket_disconnects",
            "WebSocket clients gone, by why: client, slow, auth, shutdown, error.",
            ["reason"],
            registry=r,
        )
        for outcome in ("ready", "failed"):
            self._vod_jobs.labels(outcome)  # present at 0 before the first job, so rate() works
        self._live = _LiveState(free_disk_bytes, min_free_bytes)
        r.register(self._live)
        ProcessCollector(registry=r)

    # --- feeding ---------------------------------------------------------------------------------

    def attach(self, bus: EventBus) -> None:
        """Start counting the bus's events."""
        for event_type, handler in self._handlers():
            bus.subscribe(event_type, handler)

    def detach(self, bus: EventBus) -> None:
        """Stop counting the bus's events."""
        for event_type, handler in self._handlers():
            bus.unsubscribe(event_type, handler)

    def _handlers(self) -> list[tuple[type[Any], Callable[[Any], None]]]:
        # Handlers only update numbers in memory: the bus awaits them on the publisher's path.
        return [
            (StreamStatusChanged, self._live.on_status),
            (ViewerCountChanged, self._live.on_viewers),
            (IngestProgress, self._live.on_progress),
            (PublisherDisconnected, self._on_disconnected),
            (ListenerStarted, self._on_listener_started),
            (IngestGaveUp, self._on_gave_up),
            (RecordingReady, self._on_recording_ready),
            (RecordingFailed, self._on_recording_failed),
        ]

    def observe_request(self, service: str, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        method = method if method in METHODS else "other"
        key = (service, route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # labels() hashes and validates its values on every call (py-spy: 2-4 % of a cached
            # API request); the few (route, method, status) combinations are remembered instead.
            children = (
                self._http_requests.labels(service, route, method, str(status)),
                self._http_duration.labels(service, route, method),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def websocket_opened(self) -> None:
        """A WebSocket client was accepted."""
        self._live.websocket_clients += 1

    def websocket_closed(self, reason: str) -> None:
        """A WebSocket client went away; `reason` is a short fixed word (client, slow, auth, shutdown)."""
        self._live.websocket_clients = max(0, self._live.websocket_clients - 1)
        self._ws_disconnects.labels(reason).inc()

    def websocket_refused(self) -> None:
        """A WebSocket connection was closed before it was accepted as a client (bad token)."""
        self._ws_disconnects.labels("auth").inc()

    def _on_disconnected(self, event: PublisherDisconnected) -> None:
        self._disconnects.inc()
        self._live.bitrate.pop(event.stream_id, None)

    def _on_listener_started(self, event: ListenerStarted) -> None:
        if event.restart > 0:
            self._restarts.inc()

    def _on_gave_up(self, event: IngestGaveUp) -> None:
        self._gave_up.inc()

    def _on_recording_ready(self, event: RecordingReady) -> None:
        self._vod_done("ready", event.processing_seconds)

    def _on_recording_failed(self, event: RecordingFailed) -> None:
        self._vod_done("failed", event.processing_seconds)

    def _vod_done(self, outcome: str, seconds: float | None) -> None:
        self._vod_jobs.labels(outcome).inc()
        if seconds is not None:
            self._vod_duration.labels(outcome).observe(seconds)

    # --- reading ---------------------------------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric and its content type: Prometheus text, or OpenMetrics if `accept` asks for it."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _LiveState:
    """What is live right now, kept from events and turned into gauges at scrape time.

    Gauges built at collect time (rather than prometheus Gauge objects) make a stopped
    stream's series vanish by just dropping it from a dict.
    """

    def __init__(self, free_disk_bytes: Callable[[], int | None], min_free_bytes: int) -> None:
        self._free_disk_bytes = free_disk_bytes
        self._min_free_bytes = min_free_bytes
        self.status: dict[str, str] = {}
        self.viewers: dict[str, int] = {}
        self.bitrate: dict[str, float] = {}
        self.websocket_clients = 0

    def on_status(self, event: StreamStatusChanged) -> None:
        if event.status in LIVE:
            self.status[event.stream_id] = event.status
            self.viewers.setdefault(event.stream_id, 0)
        else:
            self.status.pop(event.stream_id, None)
            self.viewers.pop(event.stream_id, None)
            self.bitrate.pop(event.stream_id, None)

    def on_viewers(self, event: ViewerCountChanged) -> None:
        # The final "0 viewers" of a stream comes after it stopped: no series comes back for it.
        if event.stream_id in self.status:
            self.viewers[event.stream_id] = event.count

    def on_progress(self, event: IngestProgress) -> None:
        if event.stream_id in self.status and event.bitrate_kbps is not None:
            self.bitrate[event.stream_id] = event.bitrate_kbps

    def collect(self) -> Iterable[Metric]:
        live = GaugeMetricFamily("streamplat_streams_live", "Live streams, by status.", labels=["status"])
        for status in LIVE:
            live.add_metric([status], sum(1 for s in self.status.values() if s == status))
        yield live
        viewers = GaugeMetricFamily(
            "streamplat_stream_viewers", "Distinct HLS viewers of each live stream.", labels=["stream_id"]
        )
        for stream_id, count in self.viewers.items():
            viewers.add_metric([stream_id], count)
        yield viewers
        bitrate = GaugeMetricFamily(
            "streamplat_ingest_bitrate_kbps",
            "Incoming media bitrate of each live stream, kbit/s.",
            labels=["stream_id"],
        )
        for stream_id, kbps in self.bitrate.items():
            bitrate.add_metric([stream_id], kbps)
        yield bitrate
        free = self._free_disk_bytes()
        if free is not None:
            yield GaugeMetricFamily(
                "streamplat_data_dir_free_bytes", "Free space in the data directory, bytes.", value=free
            )
        yield GaugeMetricFamily(
            "streamplat_data_dir_min_free_bytes",
            "Free space the data directory must keep (storage.min_free_bytes); below, no stream starts.",
            value=self._min_free_bytes,
        )
        yield GaugeMetricFamily(
            "streamplat_websocket_clients",
            "WebSocket clients connected to /ws.",
            value=self.websocket_clients,
        )


def _loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    # An IPv4 client of a dual-stack socket shows as ::ffff:127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_scraper(request: Request[Any, Any, Any], token: str) -> None:
    """Let a scraper in: with `metrics.token` set, it must send it as a bearer token (401 else);
    without one, it must connect from this machine (403 else). Metrics name live streams, and a
    live stream's id is all it takes to watch it."""
    if token:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise Unauthorized("Metrics need the token configured as metrics.token (Authorization: Bearer)")
        return
    if not _loopback(request.client.host if request.client else None):
        raise Forbidden("Metrics are served to this machine only; set metrics.token to scrape from elsewhere")


@get("/metrics", tags=["metrics"], include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics of the whole platform (all four ports)."""
    check_scraper(request, request.app.state.platform.settings.metrics.token)
    metrics: PlatformMetrics = request.app.state.platform.metrics
    body, content_type = metrics.exposition(request.headers.get("accept", ""))
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})


__all__ = ["PlatformMetrics", "metrics_endpoint"]
