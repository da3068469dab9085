"""`streamplat serve`: one process, four HTTP listeners, one platform.

Start order: lock the data directory first (a second server on it fails fast, naming the pid
of the first, before it touches anything), then bind every socket (a port in use fails fast,
before migrations or FFmpeg run), then start the platform, then serve. The lock comes before
the ports because a second server with the same config would otherwise only learn "port in
use", and one with other ports would not fail at all and would reconcile the first one's
live streams.

Stop order on SIGINT/SIGTERM: stop accepting and finish in-flight requests on all four
servers, then close the platform (FFmpeg children stopped gracefully, VOD workers awaited,
database closed), then release the data directory, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable, Generator, Iterator

import uvicorn
from litestar import Litestar

from streamplat import datadir
from streamplat.app import SERVICES, Platform, build_apps, ports
from streamplat.config import Settings
from streamplat.db import DatabaseUnreachable, SchemaNewer
from streamplat.hls.asgi import DirectHls, HlsFastPath
from streamplat.http import RequestContext
from streamplat.nodes import ClusterMismatch
from streamplat.protocols import DirectAnswer, http_protocol
from streamplat.vod.objectstore import ObjectStorageError

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says why (e.g. which port is taken)."""


class _Server(uvicorn.Server):
    # Four servers share one process, so signals are handled once, by `serve`, for all of them.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _addresses(host: str) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses to listen on: "localhost" means both 127.0.0.1 and ::1, so clients that
    resolve localhost to either (Node 20's fetch prefers ::1) reach us."""
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host in ("*", ""):
        return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]


def bind_sockets(host: str, port: int, name: str) -> list[socket.socket]:
    """Listening TCP sockets for one app; StartupError naming the port if it is taken."""
    bound: list[socket.socket] = []
    addresses = _addresses(host)
    for family, address in addresses:
        # IPPROTO_TCP, not 0: asyncio turns Nagle off on accepted connections only when the
        # listening socket says TCP, and with Nagle on every small reply on a kept-alive
        # connection waits ~40 ms for the client's delayed ACK. TCP_NODELAY on the listener
        # as well, for loops that do not set it themselves (Linux copies it to accepted sockets).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            # A machine without IPv6 still serves localhost over IPv4.
            if (
                family == socket.AF_INET6
                and len(addresses) > 1
                and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            ):
                log.warning("IPv6 address %s unavailable; %s listens on IPv4 only", address, name)
                continue
            for s in bound:
                s.close()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} ({name}) is already in use on {address}") from None
            raise StartupError(f"cannot listen on {address}:{port} ({name}): {exc.strerror}") from None
        bound.append(sock)
    return bound


@contextlib.contextmanager
def _bound(settings: Settings) -> Iterator[dict[str, list[socket.socket]]]:
    sockets: dict[str, list[socket.socket]] = {}
    try:
        for name, port in ports(settings).items():
            sockets[name] = bind_sockets(settings.server.host, port, SERVICES[name])
        yield sockets
    finally:
        for group in sockets.values():
            for sock in group:
                sock.close()


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless `server.loop` says asyncio (or uvloop is missing and "auto" allows that)."""
    if settings.server.loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.server.loop == "uvloop":
            raise StartupError("server.loop is uvloop, but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def http_parser(settings: Settings) -> str:
    """The HTTP/1.1 parser uvicorn uses: "httptools" (C, fast) or "h11" (pure Python)."""
    if settings.server.http == "h11":
        return "h11"
    try:
        import httptools  # noqa: F401
    except ImportError:
        if settings.server.http == "httptools":
            raise StartupError("server.http is httptools, but httptools is not installed") from None
        return "h11"
    return "httptools"


def uvicorn_config(app: Litestar, settings: Settings, direct: DirectAnswer | None = None) -> uvicorn.Config:
    """The uvicorn settings of every listener (the bench serves its reference app with them too).

    This is the one place uvicorn is configured; every port gets the same settings, except that
    the Stream App's protocol answers live /hls/ requests itself (`direct`, httptools only).
    """
    return uvicorn.Config(
        app,
        # The loop is chosen once for the whole process by `run` (loop_factory); uvicorn must not
        # set up another.
        loop="none",
        # The chosen parser with the header size (431) and header time (408) limits (protocols.py).
        http=http_protocol(
            http_parser(settings),
            max_header_bytes=settings.server.max_header_bytes,
            header_timeout=settings.server.header_timeout_seconds,
            direct=direct,
        ),
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_timeout_seconds),
        # Players poll every segment and API clients every few seconds; uvicorn's
        # 5 s default closes idle connections just as clients reuse them
        # ("connection reset by peer"). 75 s is nginx's default.
        timeout_keep_alive=75,
        # X-Forwarded-For / -Proto only from these (nginx, deploy/nginx/streamplat.conf).
        proxy_headers=True,
        forwarded_allow_ips=settings.server.trusted_proxies,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )


def direct_hls(app: Litestar) -> DirectHls | None:
    """The Stream App's live /hls/ answers for its protocol (see `DirectHls`), found where
    `build_apps` put the fast path: inside the app's request-id/metrics wrapper."""
    context = app.asgi_handler
    if isinstance(context, RequestContext) and isinstance(context.app, HlsFastPath):
        return DirectHls(context.app, context)
    return None


def run(settings: Settings) -> None:
    """Run `serve` on the configured event loop (asyncio's by default) until SIGINT or SIGTERM."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(serve(settings))


async def serve(settings: Settings) -> None:
    """Run the four listeners until SIGINT or SIGTERM."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(datadir.exclusive(settings.data_path, "serve"))
        except datadir.DataDirInUse as exc:
            raise StartupError(str(exc)) from None
        try:
            await _serve(settings)
        except ObjectStorageError as exc:
            # Only the start-up check lets this out: uploads handle their own failures.
            raise StartupError(exc.reason) from None
        except (DatabaseUnreachable, SchemaNewer, ClusterMismatch) as exc:  # raised only while starting
            raise StartupError(str(exc)) from None


def _freeze_startup_objects() -> None:
    """Move everything made while starting out of the garbage collector's sight (gc.freeze).

    The apps, routes, ORM mappers and modules live until exit, yet every full collection walked
    them all again: bench/api.py's list reads saw full collections of 29, 56, 80 and 100 ms
    under load (a gc callback timed them), each one a stall of every request in flight and the
    p99 of the read that caught it. Frozen, a full collection walks only what was made since:
    3.7-4.4 ms in the same runs.
    """
    gc.collect()
    gc.freeze()
    log.info("gc: %d objects from start-up frozen (full collections skip them)", gc.get_freeze_count())


async def _serve(settings: Settings) -> None:
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    log.info("http stack %s + %s", loop_name, http_parser(settings))
    with _bound(settings) as sockets:
        async with Platform(settings) as platform:
            apps = build_apps(platform)
            direct = {"stream": direct_hls(apps["stream"])}
            if direct["stream"] is not None and http_parser(settings) == "httptools":
                log.info("live /hls/ answers from memory are written by the Stream App's HTTP protocol")
            servers = {name: _Server(uvicorn_config(apps[name], settings, direct.get(name))) for name in apps}
            _freeze_startup_objects()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            tasks = {
                name: asyncio.create_task(server.serve(sockets=sockets[name]))
                for name, server in servers.items()
            }
            for name, group in sockets.items():
                for sock in group:
                    addr = sock.getsockname()
                    log.info(
                        "%s listening on http://%s:%s",
                        SERVICES[name],
                        f"[{addr[0]}]" if ":" in addr[0] else addr[0],
                        addr[1],
                    )
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                log.error("a listener stopped unexpectedly; shutting down")
            else:
                log.info("shutdown requested; finishing in-flight requests")
            waiter.cancel()
            # Every server stops accepting at once; each finishes its in-flight requests.
            for server in servers.values():
                server.should_exit = True
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            log.info("listeners closed; stopping streams, workers and the database")
    log.info("streamplat stopped")
