"""What every port shares: request ids, access logs, request metrics, health, CORS, OpenAPI, errors."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import msgspec
from litestar import Litestar, Response
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, ReceiveMessage, Scope, Send

from streamplat.db import isoformat
from streamplat.errors import exception_handlers
from streamplat.logs import request_id_var

access_log = logging.getLogger("streamplat.access")

# Route label of a request no route matched (404, 405): never the raw path, which callers choose.
UNMATCHED_ROUTE = "unmatched"

RequestObserver = Callable[[str, str, str, int, float], None]
"""Called once per answered HTTP request: (service, route template, method, status, seconds)."""


# Request ids: 32 hex digits like uuid4().hex, unique across restarts (a random half chosen at
# start) and within the process (a counter), with no system call per request (py-spy put 7 % of
# a /health request on os.urandom's getrandom() here).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def next_request_id() -> str:
    """A new request id."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class RequestContext:
    """ASGI middleware: a request id per request (X-Request-ID in and out), one access log line
    and one metrics observation per HTTP request, and one log line per WebSocket connection."""

    def __init__(
        self,
        app: ASGIApp,
        service: str,
        observe: RequestObserver | None = None,
        allow: dict[str, bytes] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.observe = observe
        self.allow = allow or {}
        # Successful requests under this path prefix get no access log line (errors always do):
        # set for /hls/ unless logging.hls_access_log, because a viewer makes ~10 a second.
        self.quiet_prefix: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = str(scope["type"])
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Read as a plain dict: the ASGI TypedDicts differ per scope and message type.
        raw: dict[str, Any] = cast("dict[str, Any]", scope)
        request_id = request_id_of(raw["headers"])
        raw.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0  # HTTP: the response status; WebSocket: the close code, whoever closed first

        async def send_with_id(message: Message) -> None:
            nonlocal status
            m = cast("dict[str, Any]", message)
            if m["type"] in ("http.response.start", "websocket.http.response.start"):
                status = int(m["status"])
                headers = [*(m.get("headers") or []), (b"x-request-id", request_id.encode())]
                allow = self.allow.get(raw.get("path_template") or "")
                if allow is not None and raw["method"] == "OPTIONS":
                    headers = [(k, allow if k.lower() == b"allow" else v) for k, v in headers]
                m["headers"] = headers
            elif m["type"] == "websocket.accept":
                m["headers"] = [*(m.get("headers") or []), (b"x-request-id", request_id.encode())]
            elif m["type"] == "websocket.close" and not status:
                status = int(m.get("code") or 1000)
            await send(message)

        async def receive_noting_close() -> ReceiveMessage:
            nonlocal status
            message = await receive()
            if message["type"] == "websocket.disconnect" and not status:
                status = int(cast("dict[str, Any]", message).get("code") or 1005)
            return message

        try:
            await self.app(scope, receive_noting_close if kind == "websocket" else receive, send_with_id)
        except BaseException:
            if status == 0 and kind == "http":
                status = 500  # what uvicorn answers for an app that raised before answering
            raise
        finally:
            elapsed = time.perf_counter() - started
            if kind == "http":
                self.answered(raw["method"], raw["path"], raw.get("path_template"), status, elapsed)
            else:
                # One line per connection, when it ends; the path never includes the ?token=.
                access_log.info(
                    "WEBSOCKET %s closed %s after %.1fs",
                    raw["path"],
                    status,
                    elapsed,
                    extra={"service": self.service},
                )
            request_id_var.reset(token)

    def answered(self, method: str, path: str, route: str | None, status: int, elapsed: float) -> None:
        """One HTTP request was answered: its access log line (unless quiet) and its metrics.
        Called with the request's id in `request_id_var`; also by the Stream App's direct
        /hls/ answers (hls/asgi.py `DirectHls`), which skip this middleware."""
        quiet = self.quiet_prefix
        if quiet is None or status >= 400 or not path.startswith(quiet):
            access_log.info(
                "%s %s %s %.1fms", method, path, status, elapsed * 1000, extra={"service": self.service}
            )
        if self.observe is not None:
            self.observe(self.service, route or UNMATCHED_ROUTE, method, status, elapsed)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: the caller's X-Request-ID (the last one) if it is short and plain, so
    it cannot forge log lines, else a new one."""
    incoming = dict(headers).get(b"x-request-id", b"").decode("latin-1")
    plain = 0 < len(incoming) <= 64 and incoming.replace("-", "").isalnum()
    return incoming if plain else next_request_id()


class Route(HTTPRouteHandler):
    """An HTTP route handler whose guards are handed the handler itself.

    Litestar hands every guard a `copy()` of the handler, so that a guard cannot change it: 9 %
    of a cached GET /api/streams/{id} (py-spy). The guards of auth.guards never look at it.
    Use it through `get`, `post`, `patch` and `delete` below, which are Litestar's decorators
    of the same names (the same defaults: the status code follows the method) on this class.
    """

    async def authorize_connection(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """Run every guard in scope (from the app down to this handler), in order."""
        for guard in self.resolve_guards():
            await guard(connection, self)  # type: ignore[misc]  # resolve_guards() made them async


get = functools.partial(Route, http_method=HttpMethod.GET)
post = functools.partial(Route, http_method=HttpMethod.POST)
patch = functools.partial(Route, http_method=HttpMethod.PATCH)
delete = functools.partial(Route, http_method=HttpMethod.DELETE)


class HealthOut(msgspec.Struct, omit_defaults=True):
    status: str
    service: str
    timestamp: str
    reason: str | None = None


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case, as ASGI servers give names) in a raw list."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def has_header(scope: Scope, name: bytes) -> bool:
    """Whether the request carries header `name` (lower case), read from the scope's raw list."""
    return any(key.lower() == name for key, _ in cast("dict[str, Any]", scope)["headers"])


class CorsOnlyWithOrigin:
    """Litestar's CORS middleware for requests with an `Origin` header; the rest skip it.

    Without an Origin the middleware only passes the request on, but it builds the request's
    header multidict to find that out (py-spy: 6 % of a cached GET /api/streams/{id}).
    `cors` is Litestar's middleware, `app` the app it wraps (its own `.app`).
    """

    def __init__(self, cors: ASGIApp, app: ASGIApp) -> None:
        self.cors = cors
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if has_header(scope, b"origin"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def skip_cors_without_origin(handler: ASGIApp) -> ASGIApp:
    """`handler` (a Litestar app's `asgi_handler`) behind `CorsOnlyWithOrigin` when it is
    Litestar's CORS middleware (it is when the app has a `cors_config`), else `handler`."""
    inner: ASGIApp | None = getattr(handler, "app", None)
    if type(handler).__name__ != "CORSMiddleware" or inner is None:
        return handler
    return CorsOnlyWithOrigin(handler, inner)


class HealthAnswer:
    """The /health answer of one service: (status code, body, the body's JSON).

    Built once per second and per state, for both ways /health is served (`HealthFastPath` and
    the Litestar route), so the two cannot drift apart.
    """

    def __init__(self, service: str, platform: Any) -> None:
        self.service = service
        self.platform = platform
        self._key: tuple[int, str | None, str | None] | None = None
        self._answer: tuple[int, HealthOut, bytes] = (0, HealthOut("", "", ""), b"")

    async def __call__(self) -> tuple[int, HealthOut, bytes]:
        # Degraded: up and serving, but refusing some work (e.g. new streams on a nearly full disk).
        problem, warning = await self.platform.health()
        now = time.time()
        key = (int(now), problem, warning)
        if key != self._key:
            body = HealthOut(
                status="unhealthy" if problem else "degraded" if warning else "healthy",
                service=self.service,
                timestamp=isoformat(dt.datetime.fromtimestamp(key[0], dt.UTC)) or "",
                reason=problem or warning,
            )
            self._answer = (503 if problem else 200, body, msgspec.json.encode(body))
            self._key = key
        return self._answer


def health_route(answer: HealthAnswer) -> Any:
    """GET /health for `answer`'s service: 200 healthy, 200 degraded or 503 unhealthy with the reason."""

    @get("/health", tags=["health"], name=f"{answer.service}-health")
    async def health() -> Response[HealthOut]:
        """Report whether this service can work: healthy, degraded (200, with why) or unhealthy (503)."""
        status, body, _ = await answer()
        return Response(body, status_code=status)

    return health


class HealthFastPath:
    """ASGI wrapper: a plain `GET /health` answered with two sends, everything else to `app`.

    Load balancers and monitors poll /health; through Litestar (routing, a Request, the CORS and
    exception middleware, a Response) it cost three times a bare app's request (py-spy). A
    request with an `Origin` header still goes to the Litestar route, which adds the CORS
    headers; so do HEAD, other paths and every other method. The answer is the route's own
    (`HealthAnswer`), and it still gets its request id, access log line and metrics from
    `RequestContext` around this.
    """

    def __init__(self, app: ASGIApp, answer: HealthAnswer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = cast("dict[str, Any]", scope)
        if (
            raw["type"] != "http"
            or raw["path"] != "/health"
            or raw["method"] != "GET"
            or has_header(scope, b"origin")
        ):
            await self.app(scope, receive, send)
            return
        raw["path_template"] = "/health"  # as Litestar sets it: the route label of the metrics
        status, _, body = await self.answer()
        await send_json(send, status, body)


async def send_json(send: Send, status: int, body: bytes) -> None:
    """Answer with `body` (encoded JSON) in two sends: the fast paths' way around Litestar."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def build_app(
    *,
    service: str,
    title: str,
    platform: Any,
    route_handlers: Sequence[ControllerRouterHandler],
    cors_origins: list[str],
    max_body_bytes: int,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    observe_request: RequestObserver | None = None,
) -> Litestar:
    """A Litestar app for one port, with the shared error handlers, health, CORS and OpenAPI."""
    from streamplat import __version__

    health = HealthAnswer(service, platform)
    app = Litestar(
        route_handlers=[health_route(health), *route_handlers],
        exception_handlers=exception_handlers(),
        cors_config=CORSConfig(
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS", "HEAD"],
            allow_headers=["Authorization", "Content-Type", "Range", "X-Request-ID"],
            expose_headers=[
                "Content-Length",
                "Content-Range",
                "Accept-Ranges",
                "X-Request-ID",
                "Retry-After",
            ],
            max_age=600,
        ),
        openapi_config=OpenAPIConfig(
            title=title,
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=max_body_bytes,
        state=State({"platform": platform}),
        logging_config=None,
        on_shutdown=list(on_shutdown),
    )
    # Around routing, not as a route middleware (Litestar's `middleware=` only wraps matched
    # routes): unknown paths and 405s get a request id, an access line and a count as well.
    app.asgi_handler = RequestContext(
        HealthFastPath(skip_cors_without_origin(app.asgi_handler), health),
        service,
        observe_request,
        allowed_methods(app),
    )
    return app


_PARAM_TYPE = re.compile(r"\{(\w+):[^}]*\}")


def allowed_methods(app: Litestar) -> dict[str, bytes]:
    """The `Allow` header value of each HTTP path: every method its handlers answer.

    Litestar builds a path's automatic OPTIONS handler with the first handler registered for that
    path and does not update it when a second one (GET beside POST on /api/streams) joins, so
    its own `Allow` lists too few methods; `RequestContext` answers with this map instead.
    """
    allow: dict[str, bytes] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods = {m for handler in route.route_handlers for m in handler.http_methods} | {"OPTIONS"}
            # Keyed like scope["path_template"]: "/api/streams/{stream_id}", without ":str".
            allow[_PARAM_TYPE.sub(r"{\1}", route.path)] = ", ".join(sorted(methods)).encode()
    return allow
