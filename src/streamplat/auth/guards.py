"""The one token check and role guard, used by every port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Scope

from streamplat.auth.schemas import Principal
from streamplat.errors import Forbidden

if TYPE_CHECKING:
    from streamplat.auth.services import AuthService

_STATE_KEY = "principal"


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (or `?token=` for WebSockets)."""
    token = header_bearer_token(connection.scope)
    if token is not None:
        return token
    if str(connection.scope["type"]) == "websocket":
        return connection.query_params.get("token") or None
    return None


def header_bearer_token(scope: Scope) -> str | None:
    """The token of the scope's `Authorization: Bearer <token>` header, else None."""
    # Read straight from the scope: `connection.headers` builds a header multidict for the whole
    # request (py-spy: 6 % of a cached GET /api/streams/{id}) to look up this one header.
    header = ""
    for name, value in cast("dict[str, Any]", scope)["headers"]:
        if name.lower() == b"authorization":
            header = value.decode("latin-1")
            break
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _auth_service(connection: ASGIConnection[Any, Any, Any, Any]) -> AuthService:
    service: AuthService = connection.app.state.platform.auth
    return service


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller, checked once per request (401 if the token is not valid)."""
    cached = connection.scope.get("state", {}).get(_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    principal = await _auth_service(connection).authenticate(bearer_token(connection))
    connection.scope.setdefault("state", {})[_STATE_KEY] = principal
    return principal


def guarded_caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller that this route's `requires_login` / `requires_role` guard authenticated.

    For a handler behind one of those guards, instead of the `principal` dependency: Litestar's
    dependency resolution (a model, a cleanup group) was 9 % of a cached GET /api/streams/{id}
    (py-spy), to hand over what the guard already put in the scope.
    """
    principal = connection.scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("guarded_caller() is for handlers behind requires_login or requires_role")
    return principal


async def optional_principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The caller if a token was sent (and it must then be valid), else None."""
    if bearer_token(connection) is None:
        return None
    return await authenticate(connection)


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def requires_role(*roles: str) -> Guard:
    """A guard: the caller must hold a valid token and one of `roles` (401, else 403)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        if principal.role not in roles:
            raise Forbidden(f"This action requires the role {' or '.join(roles)}")

    return guard


async def requires_login(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard: the caller must hold a valid token, any role."""
    await authenticate(connection)


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency: the authenticated caller (401 without a valid token)."""
    return await authenticate(request)
