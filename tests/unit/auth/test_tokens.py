"""TokenIssuer: a token checked once is not checked again, but never outlives its expiry."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from streamplat.auth import tokens
from streamplat.auth.tokens import InvalidToken, TokenIssuer

SECRET = "s" * 48


@pytest.fixture(name="decodes")
def fixture_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT really decodes (HMAC check and JSON parse)."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting)
    return seen


def test_a_token_is_verified_once_and_refused_after_it_expires(decodes: list[str]) -> None:
    now = [time.time()]
    issuer = TokenIssuer(SECRET, access_ttl_seconds=60, clock=lambda: now[0])
    token = issuer.issue_access(7, "ann", "viewer")
    first = issuer.check_access(token)
    assert (first.user_id, first.role, first.username) == (7, "viewer", "ann")
    assert issuer.check_access(token) == first
    assert decodes == [token]  # the second check came from memory
    now[0] += 61  # past exp: the remembered token is refused like any expired one
    with pytest.raises(InvalidToken):
        issuer.check_access(token)
    assert token not in issuer._checked


def test_only_the_exact_token_that_passed_is_remembered(decodes: list[str]) -> None:
    issuer = TokenIssuer(SECRET, access_ttl_seconds=60)
    token = issuer.issue_access(7, "ann", "viewer")
    issuer.check_access(token)
    header, _payload, signature = token.split(".")
    forged = jwt.encode(
        {**jwt.decode(token, options={"verify_signature": False}), "role": "admin"}, "x" * 48
    ).split(".")[1]
    for bad in (f"{header}.{forged}.{signature}", token[:-2] + ("AA" if token[-2:] != "AA" else "BB")):
        with pytest.raises(InvalidToken):
            issuer.check_access(bad)
    assert issuer.check_access(token).role == "viewer"


def test_the_memory_is_bounded() -> None:
    issuer = TokenIssuer(SECRET, access_ttl_seconds=60, checked_tokens=3)
    minted = [issuer.issue_access(i, f"u{i}", "viewer") for i in range(1, 6)]
    for token in minted:
        issuer.check_access(token)
    assert len(issuer._checked) == 3
    assert all(issuer.check_access(t).user_id == i for i, t in enumerate(minted, start=1))
