"""Composition root: builds the platform's services and the four Litestar apps, one per port.

This is the only module that knows every domain. `Platform` owns everything with a life
(database engine, FFmpeg supervisor, VOD workers) and is entered once by `streamplat serve`
around all four HTTP servers, so the ports share one database and one set of children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from litestar import Litestar
from litestar.types import ControllerRouterHandler
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from streamplat.auth import AuthService
from streamplat.auth.controllers import auth_router
from streamplat.auth.passwords import PasswordHashing
from streamplat.auth.principals import PrincipalCache
from streamplat.auth.ratelimit import RateLimiter
from streamplat.auth.tokens import TokenIssuer, load_or_create_secret
from streamplat.cluster import EventRelay, RedisCollector, RedisLink, SharedRateLimiter, SharedViewerTracker
from streamplat.config import Settings
from streamplat.db import create_engine, ensure_reachable, migrate, schema_revisions, session_factory
from streamplat.events import EventBus, RecordingFailed, RecordingReady, StreamChanged, UserChanged
from streamplat.hls.asgi import HlsFastPath
from streamplat.hls.disk import finalise_index
from streamplat.hls.offload import LiveOffload
from streamplat.hls.owners import OwnerRouter
from streamplat.http import RequestContext, build_app
from streamplat.ingest import IngestSettings, IngestSupervisor, finalise_playlist
from streamplat.metrics import PlatformMetrics, metrics_endpoint
from streamplat.nodes import (
    NodeRegistry,
    NodesCollector,
    internal_token,
    load_or_create_node_id,
    refuse_migration_beside_nodes,
    secret_fingerprint,
    stream_url_of,
)
from streamplat.realtime import RealtimeHub, events_socket
from streamplat.streams import PortPool, StreamService, ViewerTracker
from streamplat.streams.controllers import StreamDetailFastPath, main_stream_router, stream_app_router
from streamplat.streams.viewers import ViewerCounter, viewer_key
from streamplat.vod import RecordingService
from streamplat.vod.controllers import vod_router
from streamplat.vod.objectstore import ObjectStore
from streamplat.web import web_router

log = logging.getLogger(__name__)

HEALTH_CACHE_SECONDS = 1.0  # how stale /health's database and disk probe may be

SERVICES = {
    "auth": "auth-service",
    "main": "main-app",
    "stream": "stream-app",
    "vod": "vod-service",
}


class Platform:
    """Everything the four apps share; an async context manager that starts and stops it all."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    auth: AuthService
    supervisor: IngestSupervisor
    streams: StreamService
    recordings: RecordingService
    hub: RealtimeHub
    nodes: NodeRegistry

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        # Events raised by other processes (through Redis, [redis] url): only the WebSocket hub and
        # the read caches listen here, so durable work stays with the process that raised them.
        self.remote_bus = EventBus()
        self.metrics = PlatformMetrics(self.free_disk_bytes, settings.storage.min_free_bytes)
        self.rate_limiters: dict[str, RateLimiter | SharedRateLimiter] = {
            "login": RateLimiter(settings.rate_limit.login_per_minute, 60.0),
            "register": RateLimiter(settings.rate_limit.register_per_minute, 60.0),
        }
        self.redis: RedisLink | None = None
        self.relay: EventRelay | None = None
        self._stack = contextlib.AsyncExitStack()
        # Resolved once: Settings.data_path resolves symlinks on every call.
        self._writable_dirs = (settings.data_path, settings.hls_path, settings.recordings_path)
        self._health_lock = asyncio.Lock()
        self._health: tuple[str | None, str | None] | None = None
        self._health_at = 0.0

    async def __aenter__(self) -> Platform:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The stack unwinds in reverse order of start: children and workers stop before the
        # database they report to is closed.
        await self._stack.aclose()

    async def _start(self) -> None:
        s = self.settings
        for path in (s.data_path, s.hls_path, s.recordings_path / "vod"):
            path.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(s.database_url)
        self._stack.push_async_callback(self.engine.dispose)
        await ensure_reachable(self.engine)  # DatabaseUnreachable names the host, not a traceback
        # MigrationBlocked while other nodes run on an older schema; SchemaNewer when another
        # node's newer code migrated past us.
        node_id = load_or_create_node_id(s.cluster.node_id, s.data_path)
        await refuse_migration_beside_nodes(
            self.engine, own_node_id=node_id, timeout_seconds=s.cluster.node_timeout_seconds
        )
        await migrate(self.engine)
        self.sessions = session_factory(self.engine)
        secret = load_or_create_secret(s.auth.jwt_secret, s.data_path / "secrets")
        passwords = PasswordHashing.from_settings(s.auth)
        self._stack.callback(passwords.close)
        principals = PrincipalCache(s.auth.principal_cache_seconds)
        for bus in (self.bus, self.remote_bus):
            principals.attach(bus)
            self._stack.callback(principals.detach, bus)
        if s.redis.url:
            await self._start_redis()
        # Before the stream service, which asks it whose streams are whose, and stopped after it:
        # this node's streams end before its row says it left.
        self.nodes = await self._stack.enter_async_context(await self._node_registry(node_id, secret))
        self.metrics.registry.register(NodesCollector(self.nodes))
        self.auth = AuthService(
            self.sessions,
            passwords,
            TokenIssuer(secret, s.auth.access_token_ttl_seconds),
            s.auth.refresh_token_ttl_seconds,
            self.bus,
            principals,
        )
        # Metrics and the WebSocket hub listen before any domain publishes, and stop listening last.
        self.metrics.attach(self.bus)
        self._stack.callback(self.metrics.detach, self.bus)
        self.hub = await self._stack.enter_async_context(
            RealtimeHub(
                self.bus,
                self.auth,
                queue_size=s.websocket.queue_size,
                auth_timeout_seconds=s.websocket.auth_timeout_seconds,
                observer=self.metrics,
                remote=self.remote_bus,
            )
        )
        ffmpeg = s.ffmpeg_binary()
        i = s.ingest
        store = await self._open_object_store()
        # Live uploads stop after the supervisor that feeds them (the stack unwinds in reverse).
        self.offload: LiveOffload | None = None
        if store is not None and s.object_storage.live_enabled:
            self.offload = await self._stack.enter_async_context(LiveOffload(store))
            self.metrics.registry.register(self.offload)
        self.supervisor = await self._stack.enter_async_context(
            IngestSupervisor(
                IngestSettings(
                    ffmpeg_binary=ffmpeg,
                    srt_bind_host=i.srt_bind_host,
                    segment_seconds=i.segment_seconds,
                    playlist_size=i.playlist_size,
                    part_seconds=i.part_seconds,
                    first_segment_seconds=i.first_segment_seconds,
                    memory_segments=i.memory_segments,
                    low_latency=i.low_latency,
                    reconnect_window_seconds=i.reconnect_window_seconds,
                    max_restarts=i.max_restarts,
                    stop_timeout_seconds=i.stop_timeout_seconds,
                    srt_latency_ms=i.srt_latency_ms,
                    private_dir=s.data_path / "run" / "ingest",
                ),
                self.bus,
                offload=self.offload,
            )
        )
        # Recordings start before streams and stop after them: streams stopped at shutdown
        # still get their recording rows queued.
        self.recordings = await self._stack.enter_async_context(
            RecordingService(
                self.sessions,
                self.bus,
                ffmpeg,
                s.recordings_path,
                workers=s.vod.workers,
                job_timeout_seconds=s.vod.job_timeout_seconds,
                store=store,
                live_uploads=self.offload,
                read_cache_seconds=s.server.read_cache_seconds,
            )
        )
        # Viewers count while they fetched within the last three segments (at least 6 s), so
        # a player between two segment fetches still counts.
        window = max(6.0, 3 * i.segment_seconds)
        viewers: ViewerCounter = ViewerTracker(window)
        if self.redis is not None:
            viewers = await self._stack.enter_async_context(
                SharedViewerTracker(self.redis, window, s.redis.viewer_flush_seconds)
            )
        self.streams = await self._stack.enter_async_context(
            StreamService(
                self.sessions,
                self.bus,
                self.supervisor,
                PortPool(i.port_min, i.port_max),
                viewers,
                s.hls_path,
                s.server.public_host,
                lambda hls_dir: _finalise(hls_dir, i.segment_seconds),
                storage_problem=self.storage_problem,
                stage_recording=self.recordings.stage_recording,
                read_cache_seconds=s.server.read_cache_seconds,
                nodes=self.nodes,
            )
        )
        # Lost nodes are claimed only while the stream service runs (it stops their streams);
        # at shutdown this is undone first (the stack unwinds in reverse).
        self.nodes.recover = self.streams.stop_lost_node_streams
        self.nodes.rejoined = self.streams.drop_orphaned_ingests
        self._stack.callback(setattr, self.nodes, "recover", None)
        self._stack.callback(setattr, self.nodes, "rejoined", None)
        self.remote_bus.subscribe(UserChanged, self.auth.forget_user_pages)
        self._stack.callback(self.remote_bus.unsubscribe, UserChanged, self.auth.forget_user_pages)
        remote, forget = self.remote_bus, self._on_remote_stream_changed
        remote.subscribe(StreamChanged, forget)
        remote.subscribe(RecordingReady, forget)
        remote.subscribe(RecordingFailed, forget)
        self._stack.callback(remote.unsubscribe, StreamChanged, forget)
        self._stack.callback(remote.unsubscribe, RecordingReady, forget)
        self._stack.callback(remote.unsubscribe, RecordingFailed, forget)
        log.info(
            "platform started node=%s data_dir=%s database=%s ffmpeg=%s redis=%s",
            self.nodes.node_id,
            s.data_path,
            _safe_url(s.database_url),
            ffmpeg,
            self.redis.safe_url if self.redis is not None else "off",
        )

    async def _node_registry(self, node_id: str, secret: str) -> NodeRegistry:
        """This node's registry entry ([cluster]); entering it refuses to join a cluster that
        disagrees (ClusterMismatch: same node_id alive, another secret, clock skew)."""
        s = self.settings
        c = s.cluster
        revision, _ = await schema_revisions(self.engine)
        return NodeRegistry(
            self.sessions,
            node_id=node_id,
            public_host=s.server.public_host,
            stream_url=stream_url_of(c.internal_stream_url, s.server.public_host, s.server.stream_port),
            instance=f"{socket.gethostname()}:{s.data_path}",
            secret_fingerprint=secret_fingerprint(secret),
            schema_revision=revision or "",
            heartbeat_seconds=c.heartbeat_seconds,
            node_timeout_seconds=c.node_timeout_seconds,
            max_clock_skew_seconds=c.max_clock_skew_seconds,
            buses=(self.bus, self.remote_bus),
            internal_token=internal_token(secret),
        )

    async def _start_redis(self) -> None:
        """Share events, rate limits and viewer counts through Redis; a Redis that is down at
        start leaves the process working single-node until it answers (streamplat.cluster)."""
        r = self.settings.redis
        link = RedisLink(
            r.url,
            r.key_prefix,
            connect_timeout_seconds=r.connect_timeout_seconds,
            command_timeout_seconds=r.command_timeout_seconds,
        )
        self._stack.push_async_callback(link.close)
        self.redis = link
        self.relay = await self._stack.enter_async_context(EventRelay(link, self.bus, self.remote_bus))
        self.metrics.registry.register(RedisCollector(link, self.relay))
        for name, limiter in list(self.rate_limiters.items()):
            assert isinstance(limiter, RateLimiter)
            self.rate_limiters[name] = SharedRateLimiter(link, name, limiter)

    def _on_remote_stream_changed(self, event: StreamChanged | RecordingReady | RecordingFailed) -> None:
        # Another node changed a stream or its recording: this node's read caches forget them.
        self.streams.forget(event.stream_id)
        self.recordings.forget(event.stream_id)

    async def _open_object_store(self) -> ObjectStore | None:
        """The configured object store, checked (ObjectStorageError: the start must fail), or None."""
        o = self.settings.object_storage
        if not o.enabled:
            return None
        store = ObjectStore(o)
        await store.open()  # before any worker could try to upload to a store that is not there
        self._stack.callback(store.close)
        log.info(
            "recordings go to object storage: bucket=%s endpoint=%s prefix=%r presign=%ss live=%s",
            o.bucket,
            store.endpoint,
            o.key_prefix,
            o.presign_seconds,
            repr(o.live_prefix) if o.live_enabled else "off",
        )
        return store

    async def health(self) -> tuple[str | None, str | None]:
        """(problem, warning) as /health reports them, probed at most every HEALTH_CACHE_SECONDS.

        Monitors and load balancers may poll /health as often as they like: the database query
        and the disk probe run once per interval whatever the request rate (while one runs, other
        callers get the previous answer; only the very first callers wait for it), and the disk
        work runs on a worker thread.
        """
        if self._health is not None and time.monotonic() - self._health_at < HEALTH_CACHE_SECONDS:
            return self._health  # the common case, without even the lock
        if self._health is not None and self._health_lock.locked():
            # A probe is running: the previous answer (a second old) rather than a queue behind it.
            return self._health
        async with self._health_lock:
            if self._health is None or time.monotonic() - self._health_at >= HEALTH_CACHE_SECONDS:
                problem = await self.health_problem()
                warning = None if problem else await asyncio.to_thread(self.health_warning)
                self._health = (problem, warning)
                self._health_at = time.monotonic()
            return self._health

    async def health_problem(self) -> str | None:
        """None when healthy, else a short reason (database unreachable, data directory not writable)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}"
        return await asyncio.to_thread(self._disk_problem)

    def _disk_problem(self) -> str | None:
        for path in self._writable_dirs:
            try:
                # os.access is not enough: root passes it for read-only mounts and full disks.
                with tempfile.NamedTemporaryFile(dir=path, prefix=".health-"):
                    pass
            except OSError as exc:
                return f"data directory not writable: {path} ({exc.strerror or exc})"
        return None

    def health_warning(self) -> str | None:
        """None when nothing is held back, else why the platform is degraded (it still serves)."""
        problem = self.storage_problem()
        if problem is None and self.redis is not None and not self.redis.up:
            problem = f"redis unreachable at {self.redis.safe_url}: working single-node"
        if problem is None:
            # Before start (or in a unit test) there is no recording service yet.
            recordings: RecordingService | None = getattr(self, "recordings", None)
            problem = recordings.upload_problem if recordings is not None else None
        return problem

    def free_disk_bytes(self) -> int | None:
        """Free bytes on the data directory's file system (None if it cannot be read)."""
        try:
            return shutil.disk_usage(self.settings.data_path).free
        except OSError:
            return None

    def storage_problem(self) -> str | None:
        """Why new streams cannot start for lack of disk space, or None (storage.min_free_bytes)."""
        floor = self.settings.storage.min_free_bytes
        free = self.free_disk_bytes()
        if floor <= 0 or free is None or free >= floor:
            return None
        return (
            f"{_size(free)} free in the data directory {self.settings.data_path}, "
            f"below the floor of {_size(floor)} (storage.min_free_bytes)"
        )


def _finalise(hls_dir: Path, segment_seconds: float) -> None:
    """End a stopped stream's index: fMP4 (init + seg files), else an old MPEG-TS playlist."""
    if not finalise_index(hls_dir, segment_seconds):
        finalise_playlist(hls_dir, segment_seconds)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _safe_url(url: str) -> str:
    # Never log a database password.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def build_apps(platform: Platform) -> dict[str, Litestar]:
    """One Litestar app per port: auth, main, stream, vod."""
    s = platform.settings.server
    common: dict[str, Any] = {
        "platform": platform,
        "cors_origins": s.cors_origins,
        "max_body_bytes": s.max_body_bytes,
        "observe_request": platform.metrics.observe_request,
    }
    main: list[ControllerRouterHandler] = [
        main_stream_router(),
        events_socket,
        metrics_endpoint,
        web_router(),
    ]
    routes: dict[str, tuple[str, list[ControllerRouterHandler]]] = {
        "auth": ("streamplat Auth service", [auth_router()]),
        "main": ("streamplat Main App", main),
        "stream": ("streamplat Stream App", [stream_app_router()]),
        "vod": ("streamplat VOD service", [vod_router()]),
    }
    apps = {
        name: build_app(service=SERVICES[name], title=title, route_handlers=handlers, **common)
        for name, (title, handlers) in routes.items()
    }
    # The most polled API call, in front of the Main App's routes, inside its RequestContext.
    main_context = apps["main"].asgi_handler
    assert isinstance(main_context, RequestContext)
    main_context.app = StreamDetailFastPath(main_context.app, platform.streams, platform.auth)
    # Live HLS from memory, in front of the Stream App's routes but inside its request-id,
    # access-log and metrics wrapper (design §3.7).
    stream_app = apps["stream"]
    context = stream_app.asgi_handler
    assert isinstance(context, RequestContext)
    if not platform.settings.logging.hls_access_log:
        context.quiet_prefix = "/hls/"
    streams = platform.streams

    def touch(stream_id: str, host: str | None, agent: str | None) -> None:
        streams.touch_viewer(stream_id, viewer_key(host, agent))

    # Live HLS from memory; what this node's store does not hold, but another alive node
    # ingests, is sent there (nginx: X-Accel-Redirect; direct players: 307; hls/owners.py).
    context.app = HlsFastPath(
        OwnerRouter(context.app, platform.nodes.stream_owner, cors_origins=s.cors_origins),
        platform.supervisor.live_store,
        touch=touch,
        cors_origins=s.cors_origins,
    )
    return apps


def ports(settings: Settings) -> dict[str, int]:
    """The configured port of each app."""
    s = settings.server
    return {"auth": s.auth_port, "main": s.main_port, "stream": s.stream_port, "vod": s.vod_port}


__all__ = ["SERVICES", "Platform", "build_apps", "ports"]
