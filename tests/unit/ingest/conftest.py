"""The supervisor's tests run on both event loops `streamplat serve` can use.

uvloop (the default) forks children its own way, so preexec_fn (PR_SET_PDEATHSIG),
start_new_session and process-group signals are checked on it as well as on asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test here once on asyncio's loop and once on uvloop's."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
