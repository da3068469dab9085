"""Schemathesis over a port's own OpenAPI schema against a real server (test_schemathesis*.py).

Every operation gets generated requests, valid ones (positive) and invalid ones (negative), sent
over real HTTP with a real token, half of them about a real stream and a real, ready recording
where the operation takes a stream id. Each answer must be no 5xx and must match the schema: a
documented status code, the documented media type, a body of the documented shape, documented
headers. Deterministic: Hypothesis runs derandomized and without its example database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

from tests.integration.test_auth import bearer
from tests.support.server import ServerProcess

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


@dataclass
class World:
    """The real server and the real things the generated requests are pointed at."""

    server: ServerProcess
    admin: str
    streamer: str
    victim_id: int  # the only user PATCH /auth/users may touch
    stream_id: str = ""  # created, never started: start/stop/rotate-key/get act on it for real
    recorded_id: str = ""  # stopped, with a ready recording (MP4 + JPEG)
    cases: dict[str, int] = field(default_factory=dict)


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


def fuzz_service(world: World, service: str) -> None:
    """Fuzz every operation of `service`'s schema in both modes; fail listing every failing case."""
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
