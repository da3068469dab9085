"""The request path's shortcuts around Litestar give the same answers as the Litestar routes.

`HealthFastPath` answers a plain `GET /health` itself; `CorsOnlyWithOrigin` skips Litestar's CORS
middleware for requests without an `Origin`. Each is checked against the path it shortcuts:
the same app asked with an `Origin` header goes through Litestar's route and CORS middleware.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar import Request

from streamplat.auth import Principal, guarded_caller, requires_login, requires_role
from streamplat.errors import Unauthorized
from streamplat.http import (
    CorsOnlyWithOrigin,
    HealthAnswer,
    HealthFastPath,
    RequestContext,
    build_app,
    get,
)

ORIGIN = (b"origin", b"http://localhost:3000")


class FakeAuth:
    """Token "viewer-token" is a viewer's, "admin-token" an admin's; anything else is refused."""

    async def authenticate(self, token: str | None) -> Principal:
        role = {"viewer-token": "viewer", "admin-token": "admin"}.get(token or "")
        if role is None:
            raise Unauthorized("Invalid or expired token")
        return Principal(id=7, username=f"the {role}", role=role)


class FakePlatform:
    """Only what /health and the guards read: the health probe's (problem, warning), the tokens."""

    def __init__(self) -> None:
        self.state: tuple[str | None, str | None] = (None, None)
        self.probes = 0
        self.auth = FakeAuth()

    async def health(self) -> tuple[str | None, str | None]:
        self.probes += 1
        return self.state


@get("/needs-login", sync_to_thread=False, guards=[requires_login])
def needs_login(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A guarded route: the caller the guard authenticated."""
    return {"caller": guarded_caller(request).username}


@get("/needs-admin", sync_to_thread=False, guards=[requires_login, requires_role("admin")])
def needs_admin(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A route behind two guards."""
    return {"caller": guarded_caller(request).username}


@get("/plain", sync_to_thread=False)
def plain() -> dict[str, str]:
    """An open route."""
    return {"ok": "yes"}


class Answer:
    def __init__(self, sent: list[dict[str, Any]]) -> None:
        start, body = sent[0], sent[1]
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body: bytes = body["body"]

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any, path: str, method: str = "GET", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Answer:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
    }
    await app(scope, receive, send)
    return Answer(sent)


@pytest.fixture
def observed() -> list[tuple[str, str, str, int]]:
    return []


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def app(platform: FakePlatform, observed: list[tuple[str, str, str, int]]) -> Any:
    def observe(service: str, route: str, method: str, status: int, seconds: float) -> None:
        observed.append((service, route, method, status))

    return build_app(
        service="main-app",
        title="test",
        platform=platform,
        route_handlers=[needs_login, needs_admin, plain],
        cors_origins=["http://localhost:3000"],
        max_body_bytes=1024,
        observe_request=observe,
    )


def without_time(answer: Answer) -> dict[str, Any]:
    body = dict(answer.json())
    assert body.pop("timestamp").endswith("Z")
    return body


@pytest.mark.parametrize(
    ("state", "status", "expected"),
    [
        ((None, None), 200, {"status": "healthy", "service": "main-app"}),
        (
            (None, "disk nearly full"),
            200,
            {"status": "degraded", "service": "main-app", "reason": "disk nearly full"},
        ),
        (
            ("database unreachable: OSError", None),
            503,
            {"status": "unhealthy", "service": "main-app", "reason": "database unreachable: OSError"},
        ),
    ],
)
async def test_health_fast_path_answers_as_the_litestar_route(
    app: Any,
    platform: FakePlatform,
    state: tuple[str | None, str | None],
    status: int,
    expected: dict[str, Any],
) -> None:
    platform.state = state
    fast = await call(app, "/health")
    routed = await call(app, "/health", headers=(ORIGIN,))  # an Origin: Litestar's route and CORS
    assert fast.status == routed.status == status
    assert without_time(fast) == without_time(routed) == expected
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert int(fast.headers["content-length"]) == len(fast.body)
    assert fast.headers["x-request-id"] and routed.headers["x-request-id"] != fast.headers["x-request-id"]
    assert "access-control-allow-origin" not in fast.headers
    assert routed.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_health_fast_path_is_counted_under_its_route(
    app: Any, observed: list[tuple[str, str, str, int]]
) -> None:
    await call(app, "/health")
    await call(app, "/health", headers=(ORIGIN,))
    assert observed == [("main-app", "/health", "GET", 200)] * 2


async def test_only_a_plain_get_of_health_takes_the_fast_path(platform: FakePlatform) -> None:
    behind: list[tuple[str, str]] = []

    async def litestar(scope: Any, receive: Any, send: Any) -> None:
        behind.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = HealthFastPath(litestar, HealthAnswer("main-app", platform))
    assert (await call(app, "/health")).json()["status"] == "healthy"
    assert behind == []
    await call(app, "/health", headers=(ORIGIN,))
    await call(app, "/health", method="HEAD")
    await call(app, "/health", method="POST")
    await call(app, "/health/")
    await call(app, "/healthz")
    assert behind == [
        ("GET", "/health"),
        ("HEAD", "/health"),
        ("POST", "/health"),
        ("GET", "/health/"),
        ("GET", "/healthz"),
    ]


async def test_health_body_is_built_once_per_second_and_state(platform: FakePlatform) -> None:
    answer = HealthAnswer("vod-service", platform)
    first = await answer()
    assert await answer() is first  # the same tuple: nothing re-encoded within the second
    platform.state = (None, "redis unreachable")
    degraded = await answer()
    assert degraded[0] == 200 and json.loads(degraded[2])["reason"] == "redis unreachable"
    assert platform.probes == 3  # the platform's own probe cache decides how often it probes


async def test_cors_middleware_still_answers_requests_with_an_origin(app: Any) -> None:
    context = app.asgi_handler
    assert isinstance(context, RequestContext)
    # Litestar's CORS middleware is found and skipped without an Origin (a Litestar upgrade that
    # moved it would fail here rather than quietly add its cost back).
    assert isinstance(context.app.app, CorsOnlyWithOrigin)
    plain_answer = await call(app, "/plain")
    assert plain_answer.status == 200 and "access-control-allow-origin" not in plain_answer.headers
    with_origin = await call(app, "/plain", headers=(ORIGIN,))
    assert with_origin.status == 200 and with_origin.json() == {"ok": "yes"}
    assert with_origin.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "X-Request-ID" in with_origin.headers["access-control-expose-headers"]
    preflight = await call(
        app,
        "/plain",
        method="OPTIONS",
        headers=(ORIGIN, (b"access-control-request-method", b"GET")),
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    refused = await call(app, "/plain", headers=((b"origin", b"http://evil.example"),))
    assert refused.status == 200 and "access-control-allow-origin" not in refused.headers


async def test_guards_run_in_order_and_hand_the_caller_to_the_handler(app: Any) -> None:
    viewer = (b"authorization", b"Bearer viewer-token")
    admin = (b"authorization", b"Bearer admin-token")
    for headers in ((), (ORIGIN,), ((b"authorization", b"Bearer"),), ((b"authorization", b"Basic abc"),)):
        for path in ("/needs-login", "/needs-admin"):
            answer = await call(app, path, headers=headers)
            assert answer.status == 401 and answer.json()["code"] == 401, (path, headers)
    assert (await call(app, "/needs-login", headers=(viewer,))).json() == {"caller": "the viewer"}
    assert (await call(app, "/needs-admin", headers=(viewer,))).status == 403
    assert (await call(app, "/needs-admin", headers=(admin, ORIGIN))).json() == {"caller": "the admin"}
    # Header names are matched whatever their case (ASGI servers lower-case them; not all do).
    assert (
        await call(app, "/needs-login", headers=((b"Authorization", b"bearer viewer-token"),))
    ).status == 200


def test_guarded_caller_needs_a_guard_to_have_run() -> None:
    from litestar.connection import ASGIConnection

    connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(
        scope={"type": "http", "state": {}, "headers": []}  # type: ignore[arg-type,typeddict-item]
    )
    with pytest.raises(RuntimeError, match="requires_login"):
        guarded_caller(connection)
