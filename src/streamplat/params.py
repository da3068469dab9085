"""Query and path parameters shared by every port, with the bounds the database can store.

SQLite (and every SQL database we target) stores integers in 64 signed bits: a larger `offset`
or id used to reach the driver and fail there with a 500. Declaring the bounds on the parameter
makes Litestar refuse them before any handler runs, with a 422 naming the parameter, and puts
the bounds in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import PathParameter, QueryParameter

SQL_INT_MAX = 2**63 - 1
"""The largest integer the database can store (signed 64-bit)."""

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="page size (default 50, max 100)")]
Offset = Annotated[int, QueryParameter(ge=0, le=SQL_INT_MAX, description="items to skip")]
UserIdFilter = Annotated[
    int | None, QueryParameter(ge=1, le=SQL_INT_MAX, description="only this user's items")
]
UserIdPath = Annotated[int, PathParameter(ge=1, le=SQL_INT_MAX, description="a user's id")]
StreamIdPath = Annotated[str, PathParameter(description="a stream's id (UUID)")]
