"""Schemathesis over the Auth port's schema (tests/support/fuzz.py), in a module of its own.

Its cases hash passwords (argon2), which makes it the longest fuzz run; as its own module,
pytest-xdist runs it beside the other ports' run. PATCH /auth/users only ever targets a
sacrificial user, and the admin token used is never demoted or locked out by what is sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_auth import bearer, create_admin
from tests.support.fuzz import World, fuzz_service
from tests.support.server import running_server


@pytest.fixture(name="world", scope="module")
def fixture_world(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[World]:
    with running_server(tmp_path_factory.mktemp("fuzz-auth"), {}, db=db) as srv:
        admin = create_admin(srv, "fuzzadmin")
        victim = srv.register("fuzzvictim", "viewer")
        world = World(srv, admin, srv.user_token("fuzzstreamer"), int(victim["id"]))
        yield world
        print(f"\nschemathesis cases on auth: {world.cases}")


def test_every_auth_operation_answers_as_its_schema_says(world: World) -> None:
    fuzz_service(world, "auth")
    # The admin whose token the cases used is still an admin (nothing sent demoted it).
    me = world.server.auth.get("/auth/validate", headers=bearer(world.admin))
    assert me.status_code == 200 and me.json()["user"]["role"] == "admin"
