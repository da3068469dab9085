"""The error tree and its one mapping to the spec's HTTP error body.

    DomainError                      any rule of the platform that a request broke
     +-- BadRequest            400   malformed JSON, a body that is not an object
     +-- Unauthorized          401   missing, malformed, expired, tampered token; wrong password
     +-- Forbidden             403   wrong role, not the owner, inactive account
     +-- NotFound              404   unknown stream, recording, user, route
     +-- Conflict              409   duplicate user, stream already live, recording not ready
     +-- PayloadTooLarge       413
     +-- UnsupportedMediaType  415   a body that is not declared as JSON
     +-- ValidationFailed      422   carries `details` {field: [messages]}
     +-- RateLimited           429   carries `retry_after` seconds
     +-- ServiceUnavailable    503   port pool exhausted, database down, password hashing queue
                                     full (may carry `retry_after` seconds)
     +-- InsufficientStorage   507   disk below the configured floor

Services raise these; they never build HTTP responses. `exception_handlers()` turns them,
Litestar's own HTTP exceptions and anything unexpected into
`{"error": <reason phrase>, "message": <text>, "code": <status>}` (+ "details" for 422).
Unexpected errors answer 500 with no internals and are logged with the request id, except a
database that is briefly unavailable (PostgreSQL restarting, a dropped connection: see
`db.is_transient`), which answers 503 with Retry-After; the next request gets a fresh connection.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy.exc import DBAPIError

from streamplat.db import is_transient

log = logging.getLogger("streamplat.errors")

DATABASE_RETRY_AFTER_SECONDS = 2


class DomainError(Exception):
    """A request broke a rule; `status_code` says how that looks over HTTP."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DomainError):
    status_code = 400


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class PayloadTooLarge(DomainError):
    status_code = 413


class UnsupportedMediaType(DomainError):
    status_code = 415


class ValidationFailed(DomainError):
    status_code = 422

    def __init__(self, details: dict[str, list[str]], message: str = "Invalid input data") -> None:
        super().__init__(message)
        self.details = details


class RateLimited(DomainError):
    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(DomainError):
    status_code = 503

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientStorage(DomainError):
    status_code = 507


class ErrorBody(msgspec.Struct):
    """The spec's error body."""

    error: str
    message: str
    code: int


class ValidationErrorBody(msgspec.Struct):
    """The spec's 422 body: every invalid field with its messages."""

    error: str
    message: str
    details: dict[str, list[str]]
    code: int


def reason_phrase(status: int) -> str:
    """The HTTP reason phrase of a status code ("Not Found"); 422 says "Validation Failed" as the spec."""
    if status == 422:
        return "Validation Failed"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, message: str, details: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Build the spec's error body."""
    body: dict[str, Any] = {"error": reason_phrase(status), "message": message}
    if details is not None:
        body["details"] = details
    body["code"] = status
    return body


def error_response(
    status: int,
    message: str,
    details: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    """A Response carrying the spec's error body."""
    return Response(content=error_body(status, message, details), status_code=status, headers=headers)


# Litestar's own exceptions carry terse details; say something a frontend developer can act on.
_LITESTAR_MESSAGES = {
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
}


def _request_id(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def _handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited | ServiceUnavailable) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    details = exc.details if isinstance(exc, ValidationFailed) else None
    return error_response(exc.status_code, exc.message, details, headers or None)


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        # Query/path parameters that do not convert (e.g. limit=abc) are field errors: 422 naming them.
        details: dict[str, list[str]] = {}
        for item in exc.extra if isinstance(exc.extra, list) else []:
            if isinstance(item, dict) and item.get("key") == "data" and item.get("source") != "query":
                return error_response(400, "Request body is missing; a JSON object is required")
            if isinstance(item, dict) and item.get("key"):
                details.setdefault(str(item["key"]), []).append(str(item.get("message", "invalid value")))
        if details:
            return error_response(422, "Invalid input data", details)
        return error_response(400, str(exc.detail or "Bad request"))
    message = _LITESTAR_MESSAGES.get(status) or str(exc.detail or reason_phrase(status))
    if status == 404 and exc.detail and exc.detail != "Not Found":
        message = str(exc.detail)
    headers = dict(exc.headers or {})
    return error_response(status, message, None, headers or None)


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error(
        "unhandled error request_id=%s %s %s",
        _request_id(request),
        request.method,
        request.url.path,
        exc_info=exc,
    )
    return error_response(500, f"Internal server error (request id {_request_id(request)})")


def _handle_database(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if not is_transient(exc):
        return _handle_unexpected(request, exc)
    # Logged without a traceback: the cause (server restart, failover) is outside this process.
    log.warning(
        "database unavailable request_id=%s %s %s: %s: %s",
        _request_id(request),
        request.method,
        request.url.path,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
    return error_response(
        503,
        "The database is temporarily unavailable; try again in a moment",
        None,
        {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def exception_handlers() -> dict[type[Exception] | int, Any]:
    """The handlers every app installs, so every port answers errors in one shape."""
    return {
        DomainError: _handle_domain,
        HTTPException: _handle_http,
        # A lost or refused database connection: DBAPIError from a query, OSError from connecting.
        DBAPIError: _handle_database,
        OSError: _handle_database,
        Exception: _handle_unexpected,
    }


def responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the error bodies a handler may answer."""
    docs: dict[int, ResponseSpec] = {}
    for code in codes:
        container: type[msgspec.Struct] = ValidationErrorBody if code == 422 else ErrorBody
        docs[code] = ResponseSpec(data_container=container, description=reason_phrase(code))
    return docs
