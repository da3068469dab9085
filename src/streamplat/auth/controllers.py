"""Auth service HTTP endpoints (port 8082)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody

from streamplat.auth.guards import optional_principal, provide_principal, requires_role
from streamplat.auth.schemas import (
    LoginIn,
    MessageOut,
    Principal,
    RefreshIn,
    RegisterIn,
    RegisterOut,
    Role,
    TokenPair,
    TokenUser,
    UserList,
    UserOut,
    UserUpdateIn,
    ValidateOut,
)
from streamplat.auth.services import AuthService
from streamplat.errors import RateLimited, responses
from streamplat.http import get, patch, post
from streamplat.params import Limit, Offset, UserIdPath
from streamplat.validation import ValidatedBody


def _auth(request: Request[Any, Any, Any]) -> AuthService:
    service: AuthService = request.app.state.platform.auth
    return service


async def _rate_limit(request: Request[Any, Any, Any], limiter_name: str) -> None:
    limiter = request.app.state.platform.rate_limiters[limiter_name]
    key = request.client.host if request.client else "unknown"
    wait = await limiter.acquire(key)
    if wait is not None:
        seconds = max(1, int(wait + 0.999))
        raise RateLimited(f"Too many requests; try again in {seconds} s", retry_after=seconds)


@post(
    "/auth/register",
    dto=ValidatedBody[RegisterIn],
    return_dto=None,
    status_code=201,
    responses=responses(400, 401, 403, 409, 415, 422, 429, 503),
)
async def register(request: Request[Any, Any, Any], data: JSONBody[RegisterIn]) -> RegisterOut:
    """Register a user (role viewer by default; admin only with an admin's token)."""
    await _rate_limit(request, "register")
    actor = await optional_principal(request)
    user = await _auth(request).register(data, actor)
    return RegisterOut(message="User registered successfully", user=user)


@post(
    "/auth/login",
    dto=ValidatedBody[LoginIn],
    return_dto=None,
    status_code=200,
    responses=responses(400, 401, 403, 415, 422, 429, 503),
)
async def login(request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> TokenPair:
    """Log in with email and password; returns an access token and a refresh token."""
    await _rate_limit(request, "login")
    return await _auth(request).login(data.email, data.password)


@post(
    "/auth/refresh",
    dto=ValidatedBody[RefreshIn],
    return_dto=None,
    status_code=200,
    responses=responses(400, 401, 415, 422),
)
async def refresh(request: Request[Any, Any, Any], data: JSONBody[RefreshIn]) -> TokenPair:
    """Spend a refresh token for a new access and refresh token (each refresh token works once)."""
    return await _auth(request).refresh(data.refresh_token)


@post(
    "/auth/logout",
    dto=ValidatedBody[RefreshIn],
    return_dto=None,
    status_code=200,
    responses=responses(400, 415, 422),
)
async def logout(request: Request[Any, Any, Any], data: JSONBody[RefreshIn]) -> MessageOut:
    """Revoke a refresh token (log out this login everywhere it was refreshed)."""
    await _auth(request).logout(data.refresh_token)
    return MessageOut(message="Logged out")


@get("/auth/validate", responses=responses(401))
async def validate_token(principal: NamedDependency[Principal]) -> ValidateOut:
    """Check an access token and return who it belongs to."""
    return ValidateOut(
        valid=True, user=TokenUser(id=principal.id, username=principal.username, role=principal.role)
    )


@get("/auth/users", guards=[requires_role("admin")], responses=responses(401, 403, 422))
async def list_users(
    request: Request[Any, Any, Any],
    limit: Limit = 50,
    offset: Offset = 0,
    role: FromQuery[Role | None] = None,
) -> UserList:
    """List users, paginated (admin only)."""
    return await _auth(request).list_users(limit, offset, role)


@patch(
    "/auth/users/{user_id:int}",
    guards=[requires_role("admin")],
    dto=ValidatedBody[UserUpdateIn],
    return_dto=None,
    responses=responses(400, 401, 403, 404, 409, 415, 422),
)
async def update_user(
    request: Request[Any, Any, Any],
    user_id: UserIdPath,
    data: JSONBody[UserUpdateIn],
    principal: NamedDependency[Principal],
) -> UserOut:
    """Change a user's role or active flag (admin only)."""
    return await _auth(request).update_user(user_id, data, principal)


def auth_router() -> Router:
    """Every route of the Auth service."""
    from litestar.di import Provide

    return Router(
        path="/",
        route_handlers=[register, login, refresh, logout, validate_token, list_users, update_user],
        dependencies={"principal": Provide(provide_principal)},
        tags=["auth"],
    )
