"""Log lines are written by a thread of their own: a slow stderr never blocks whoever logs."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from streamplat import logs


class SlowStderr(io.StringIO):
    """A stderr whose writes wait until the test opens the gate (a full pipe, a busy disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.first_write = threading.Event()

    def write(self, text: str) -> int:
        self.first_write.set()
        self.gate.wait(30)
        return super().write(text)


@pytest.fixture(name="stderr")
def fixture_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowStderr]:
    slow = SlowStderr()
    monkeypatch.setattr(logs, "QUEUE_LINES", 10)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield slow
    slow.gate.set()
    logs._stop_writer()
    root.handlers[:], root.level = saved


def test_lines_keep_their_order_and_a_stuck_stderr_drops_lines_instead_of_blocking(
    stderr: SlowStderr,
) -> None:
    logs.configure("info", "text", stream=stderr)
    log = logging.getLogger("streamplat.test")
    log.info("line 0")
    assert stderr.first_write.wait(10)  # the writer thread now hangs on stderr ...
    for n in range(1, 31):
        log.info("line %d", n)  # ... and logging still returns: 10 wait, the rest are dropped
    with logs.stream_context("s-1"):
        log.warning("with a field")  # dropped too (the queue is still full)
    stderr.gate.set()
    logs._stop_writer()  # what is queued is written before the thread ends
    lines = stderr.getvalue().splitlines()
    assert lines[0].endswith("INFO    streamplat.test: line 0")
    written = [int(line.rsplit(" ", 1)[1]) for line in lines if "streamplat.test: line" in line]
    assert written == list(range(11))  # in order, none lost but the dropped ones
    assert "WARNING streamplat.logs: 21 log lines dropped: stderr was written too slowly" in lines[-1]


def test_exceptions_and_context_fields_reach_the_line(stderr: SlowStderr) -> None:
    stderr.gate.set()
    logs.configure("info", "json", stream=stderr)
    try:
        raise ValueError("broken")
    except ValueError:
        with logs.stream_context("s-2"):
            logging.getLogger("streamplat.test").exception("failed")
    logs._stop_writer()
    import json

    (line,) = stderr.getvalue().splitlines()
    body = json.loads(line)
    assert body["message"] == "failed" and body["stream_id"] == "s-2"
    assert "ValueError: broken" in body["exception"]
