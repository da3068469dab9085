"""Access tokens (HS256 JWTs) and the signing secret.

The secret comes from config (`auth.jwt_secret` / STREAMPLAT_AUTH__JWT_SECRET) or, when
absent, from `<data>/secrets/jwt_secret`, generated on first start with 0600 permissions so
tokens survive restarts. There is no built-in default secret.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from streamplat.params import SQL_INT_MAX

ALGORITHM = "HS256"


def load_or_create_secret(configured: str, secrets_dir: Path) -> str:
    """The configured secret, else the one stored in `secrets_dir` (created on first use)."""
    if configured:
        return configured
    path = secrets_dir / "jwt_secret"
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: two processes starting at once cannot both write a different secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < 32:
            raise RuntimeError(f"{path} holds no usable secret; delete it to generate a new one") from None
        return secret
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        secret = secrets.token_urlsafe(48)
        f.write(secret + "\n")
    return secret


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    username: str


class InvalidToken(Exception):
    """The token is missing, malformed, expired, tampered with or not an access token."""


class TokenIssuer:
    """Signs and checks access tokens; makes opaque refresh tokens."""

    def __init__(
        self,
        secret: str,
        access_ttl_seconds: int,
        checked_tokens: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._clock = clock
        self.access_ttl_seconds = access_ttl_seconds
        # token -> (exp, claims) of tokens whose signature and claims were already checked. A
        # client sends the same token with every request until it refreshes; checking the HMAC
        # and parsing the JSON again each time was 15 % of an authenticated read (py-spy). Only
        # the exact string that passed is remembered, and its expiry is checked at every use.
        self._checked: dict[str, tuple[float, AccessClaims]] = {}
        self._checked_max = checked_tokens

    def issue_access(self, user_id: int, username: str, role: str) -> str:
        """A signed access token for the user."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "username": username,
            "role": role,
            "type": "access",
            "iat": now,
            "exp": now + self.access_ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def check_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token; InvalidToken otherwise (incl. `alg: none`)."""
        checked = self._checked.get(token)
        if checked is not None:
            if self._clock() < checked[0]:
                return checked[1]
            del self._checked[token]
            raise InvalidToken("Signature has expired")
        claims = self._verify(token)
        if len(self._checked) >= self._checked_max:
            del self._checked[next(iter(self._checked))]  # the oldest entry
        self._checked[token] = claims
        return claims[1]

    def _verify(self, token: str) -> tuple[float, AccessClaims]:
        try:
            # Pinning the algorithm list is what refuses `alg: none` and algorithm-confusion tokens.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        if claims.get("type") != "access":
            raise InvalidToken("not an access token")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError):
            raise InvalidToken("bad subject") from None
        # A user id the database cannot hold (64-bit signed) names nobody; refusing it here keeps
        # it away from the driver, which would raise OverflowError (a 500) on the lookup.
        if not 1 <= user_id <= SQL_INT_MAX:
            raise InvalidToken("bad subject")
        return float(claims["exp"]), AccessClaims(
            user_id, str(claims.get("role", "")), str(claims.get("username", ""))
        )

    @staticmethod
    def new_refresh_token() -> tuple[str, str]:
        """A new opaque refresh token and the SHA-256 hex under which it is stored."""
        token = secrets.token_urlsafe(32)
        return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    """How refresh tokens are stored: only their SHA-256, so a leaked database leaks no tokens."""
    return hashlib.sha256(token.encode()).hexdigest()
