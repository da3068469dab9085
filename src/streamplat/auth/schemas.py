"""Auth bodies on the wire, exactly as the spec shows them (plus refresh tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

Role = Literal["admin", "streamer", "viewer"]
ROLES: tuple[str, ...] = ("admin", "streamer", "viewer")

Username = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        extra={"message": "only letters, digits, _ . - allowed"},
    ),
]
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        extra={"message": "must be a valid email", "printable": True},
    ),
]
Password = Annotated[str, msgspec.Meta(min_length=6, max_length=128)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid access token belongs to (checked against the database on every request)."""

    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class RegisterIn(msgspec.Struct):
    username: Username
    email: Email
    password: Password
    role: Role = "viewer"


class LoginIn(msgspec.Struct):
    email: Annotated[str, msgspec.Meta(min_length=1, max_length=254)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class RefreshIn(msgspec.Struct):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class UserUpdateIn(msgspec.Struct):
    """PATCH body: each field may be left out (unchanged); neither may be null."""

    role: Role | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


class UserOut(msgspec.Struct):
    id: int
    username: str
    email: str
    role: str
    is_active: bool
    created_at: str


class LoginUser(msgspec.Struct):
    id: int
    username: str
    email: str
    role: str


class TokenUser(msgspec.Struct):
    id: int
    username: str
    role: str


class RegisterOut(msgspec.Struct):
    message: str
    user: UserOut


class TokenPair(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: LoginUser


class ValidateOut(msgspec.Struct):
    valid: bool
    user: TokenUser


class UserList(msgspec.Struct):
    users: list[UserOut]
    total: int
    limit: int
    offset: int


class MessageOut(msgspec.Struct):
    message: str
