"""What every port shares: request ids and access logs, health, CORS, OpenAPI, error handlers."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from streamplat.db import isoformat, utcnow
from streamplat.errors import exception_handlers
from streamplat.logs import request_id_var

access_log = logging.getLogger("streamplat.access")


class RequestContext:
    """ASGI middleware: a request id per request (X-Request-ID in and out) and one access log line."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # Accept a caller's id only if it is short and plain, so it cannot forge log lines.
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                access_log.info(
                    "%s %s %s %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                    extra={"service": self.service},
                )
            request_id_var.reset(token)


class HealthOut(msgspec.Struct, omit_defaults=True):
    status: str
    service: str
    timestamp: str
    reason: str | None = None


def health_route(service: str) -> Any:
    """GET /health for `service`: 200 healthy, 503 unhealthy with the reason."""

    @get("/health", tags=["health"], name=f"{service}-health")
    async def health(request: Request[Any, Any, Any]) -> Response[HealthOut]:
        """Report whether this service can do its work (database reachable, data directory writable)."""
        problem = await request.app.state.platform.health_problem()
        body = HealthOut(
            status="unhealthy" if problem else "healthy",
            service=service,
            timestamp=isoformat(utcnow()) or "",
            reason=problem,
        )
        return Response(body, status_code=503 if problem else 200)

    return health


def build_app(
    *,
    service: str,
    title: str,
    platform: Any,
    route_handlers: Sequence[ControllerRouterHandler],
    cors_origins: list[str],
    max_body_bytes: int,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Litestar:
    """A Litestar app for one port, with the shared error handlers, health, CORS and OpenAPI."""
    from streamplat import __version__

    return Litestar(
        route_handlers=[health_route(service), *route_handlers],
        exception_handlers=exception_handlers(),
        cors_config=CORSConfig(
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS", "HEAD"],
            allow_headers=["Authorization", "Content-Type", "Range", "X-Request-ID"],
            expose_headers=["Content-Length", "Content-Range", "Accept-Ranges", "X-Request-ID", "Retry-After"],
            max_age=600,
        ),
        openapi_config=OpenAPIConfig(
            title=title,
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        middleware=[lambda app: RequestContext(app, service)],
        request_max_body_size=max_body_bytes,
        state=State({"platform": platform}),
        logging_config=None,
        on_shutdown=list(on_shutdown),
    )
