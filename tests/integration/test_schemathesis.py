"""Schemathesis over each port's own OpenAPI schema, against a real server with real data.

Every operation of every port gets generated requests, valid ones (positive) and invalid ones
(negative), sent over real HTTP with a real token, half of them about a real stream and a real,
ready recording. Each answer must be no 5xx and must match the schema: a documented status
code, the documented media type, a body of the documented shape, documented headers.

Deterministic for CI: Hypothesis runs derandomized (the examples follow from the schema, not
from a seed that changes per run) and without its example database.

It cannot break itself: the real stream and recording are never deleted (DELETE only gets
generated ids), PATCH /auth/users only ever targets a sacrificial user, and the streamer whose
token is used is not an admin, so nothing it sends can demote or lock out the test's users.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.test_auth import bearer, create_admin
from tests.support.media import Publisher, wait_for
from tests.support.server import ServerProcess, running_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]

# Examples per operation and generation mode. Cheap operations get many; those that start or stop
# an FFmpeg listener get few (each real start/stop costs up to a second).
EXAMPLES = 60
SLOW_OPERATIONS = {"POST /api/streams/{stream_id}/start": 12, "POST /api/streams/{stream_id}/stop": 12}
MIN_CASES = {"auth": 650, "main": 500, "stream": 160, "vod": 700}  # 2,010 in all

ENV = {
    "STREAMPLAT_INGEST__SEGMENT_SECONDS": "1",
    "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "5",
    "STREAMPLAT_STORAGE__MIN_FREE_BYTES": "0",
}


@dataclass
class World:
    """The real server and the real things the generated requests are pointed at."""

    server: ServerProcess
    admin: str
    streamer: str
    stream_id: str  # created, never started: start/stop/rotate-key/get act on it for real
    recorded_id: str  # stopped, with a ready recording (MP4 + JPEG)
    victim_id: int  # the only user PATCH /auth/users may touch
    cases: dict[str, int] = field(default_factory=dict)


@pytest.fixture(name="world", scope="module")
def fixture_world(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[World]:
    with running_server(tmp_path_factory.mktemp("fuzz"), ENV, db=db) as srv:
        admin = create_admin(srv, "fuzzadmin")
        streamer = srv.user_token("fuzzstreamer")
        victim = srv.register("fuzzvictim", "viewer")
        headers = bearer(streamer)
        stream_id = srv.main.post("/api/streams", json={"name": "Fuzzed"}, headers=headers).json()[
            "stream_id"
        ]
        recorded = srv.main.post("/api/streams", json={"name": "Recorded"}, headers=headers).json()
        started = srv.main.post(f"/api/streams/{recorded['stream_id']}/start", headers=headers).json()
        publisher = Publisher(started["srt_url"], duration=4.0).start()
        try:
            wait_for(
                lambda: (
                    srv.stream.get(f"/stream/{recorded['stream_id']}/status").json()["hls_files_count"] >= 2
                ),
                30,
                message="segments of the recorded stream",
            )
        finally:
            publisher.kill()
        srv.main.post(f"/api/streams/{recorded['stream_id']}/stop", headers=headers)
        wait_for(
            lambda: (
                srv.vod.get(f"/api/v1/recordings/{recorded['stream_id']}").json().get("status") == "ready"
            ),
            60,
            message="the recording to be ready",
        )
        world = World(srv, admin, streamer, stream_id, recorded["stream_id"], int(victim["id"]))
        yield world
        print(f"\nschemathesis cases per port: {world.cases} (total {sum(world.cases.values())})")


def _strategies(world: World, service: str, operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Generated cases of one operation, and as many again aimed at the real stream/recording."""
    label = operation.label
    generated = operation.as_strategy(generation_mode=mode)
    if label == "PATCH /auth/users/{user_id}":
        return operation.as_strategy(generation_mode=mode, path_parameters={"user_id": world.victim_id})
    if "{stream_id}" not in operation.path or operation.method.upper() == "DELETE":
        return generated
    real = world.recorded_id if service == "vod" else world.stream_id
    return st.one_of(
        generated, operation.as_strategy(generation_mode=mode, path_parameters={"stream_id": real})
    )


def _fuzz_operation(
    world: World, service: str, operation: Any, mode: GenerationMode
) -> tuple[int, list[str]]:
    token = world.admin if service == "auth" else world.streamer
    headers = bearer(token)
    base_url = world.server.url(service)
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS
    failures: list[str] = []
    count = 0
    session = requests.Session()

    @settings(
        max_examples=SLOW_OPERATIONS.get(operation.label, EXAMPLES),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategies(world, service, operation, mode))
    def run(case: Any) -> None:
        nonlocal count
        count += 1
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=checks, headers=headers)
        # Every failing case is reported, not only the first. Schemathesis raises a
        # BaseExceptionGroup subclass, which `except Exception` would not catch.
        except (Exception, BaseExceptionGroup) as exc:
            text = str(exc).strip().splitlines()
            failures.append(
                f"{operation.label} [{mode.value}] -> {response.status_code}: {' | '.join(text[:6])}"
            )

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to make invalid (e.g. negative cases of GET /health, which takes no input)
    finally:
        session.close()
    return count, failures


@pytest.mark.parametrize("service", ["auth", "main", "stream", "vod"])
def test_every_operation_answers_as_its_schema_says(world: World, service: str) -> None:
    schema = schemathesis.openapi.from_url(world.server.url(service, "/schema/openapi.json"))
    total = 0
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"{service}: the schema lists no operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count, found = _fuzz_operation(world, service, operation, mode)
            total += count
            failures.extend(found)
    world.cases[service] = total
    unique = sorted(set(failures))
    assert not unique, f"{len(failures)} failing cases on {service}:\n" + "\n".join(unique[:40])
    assert total >= MIN_CASES[service], f"{service}: only {total} cases generated"
    # The fixtures the cases aimed at survived them.
    assert (
        world.server.main.get(f"/api/streams/{world.stream_id}", headers=bearer(world.streamer)).status_code
        == 200
    )
    assert world.server.vod.get(f"/api/v1/recordings/{world.recorded_id}").json()["status"] == "ready"
