"""Logging set-up: text or JSON lines, each carrying the request id and stream id when known."""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The stream a background job works for: modules that only put it in their message text (e.g. VOD
# packaging) still get the structured `stream_id` field on every line logged inside the job.
stream_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("stream_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if getattr(record, "stream_id", None) is None:
            record.stream_id = stream_id_var.get()
        return True


@contextlib.contextmanager
def detached_from_request() -> Iterator[None]:
    """Code run inside, and tasks it starts, log without the current request's id.

    Tasks copy the context they are created in: an FFmpeg supervisor task started by a
    request would otherwise tag hours of its log lines with that one request's id.
    """
    token = request_id_var.set(None)
    try:
        yield
    finally:
        request_id_var.reset(token)


@contextlib.contextmanager
def stream_context(stream_id: str) -> Iterator[None]:
    """Every line logged inside carries `stream_id` as a structured field."""
    token = stream_id_var.set(stream_id)
    try:
        yield
    finally:
        stream_id_var.reset(token)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`"""

    _second: tuple[int, str] = (-1, "")

    def _when(self, created: float) -> str:
        # The date and time down to the second are formatted once per second, not once per line.
        second = int(created)
        if second != self._second[0]:
            stamp = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, stamp)
        return f"{self._second[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        when = self._when(record.created)
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if f"{k}=" not in line)
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = _extras(record).items()
        body.update({k: v if isinstance(v, (int, float, bool)) else str(v) for k, v in extras})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


# Lines formatted and waiting for the writer thread; beyond this many they are dropped (and
# counted in a line of their own) rather than making the event loop wait for stderr.
QUEUE_LINES = 10_000
# The writer, once woken by a line, waits this long for more before writing them all at once.
BATCH_SECONDS = 0.005


class _QueuedLines(logging.Handler):
    """Formats each record where it is logged (request and stream ids are context variables
    there) and appends the line for the writer thread: a deque append, no queue lock and no
    system call; the writer is woken once per batch, not once per line. A full queue drops
    lines; their count takes their place in the output once there is room again."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque()
        self.wake = threading.Event()
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(self.lines) >= QUEUE_LINES:
            self.dropped += 1
            return
        if self.dropped:
            self.lines.append(self.dropped_note())
            self.dropped = 0
        self.lines.append(line)
        if not self.wake.is_set():
            self.wake.set()

    def dropped_note(self) -> str:
        note = logging.makeLogRecord(
            {
                "name": __name__,
                "msg": f"{self.dropped} log lines dropped: stderr was written too slowly",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
            }
        )
        return self.format(note)


class _Writer(threading.Thread):
    """Writes the queued lines to `stream`, all that are waiting in one write.

    A writer woken for every line (through queue.Queue) took the GIL from the event loop ~6,000
    times a second under load; the access line was then the dearest part of a cached API read
    (bench runs: GET /api/streams/{id} 157 us of CPU with it and 67 without on asyncio's loop;
    /auth/validate 182 against 114 us on uvloop).
    """

    def __init__(self, source: _QueuedLines, stream: TextIO) -> None:
        super().__init__(name="log-writer", daemon=True)
        self._source = source
        self._stream = stream
        self._stopping = False

    def run(self) -> None:
        source = self._source
        while True:
            source.wake.wait()
            source.wake.clear()
            if self._stopping:
                self._write_waiting()
                return
            time.sleep(BATCH_SECONDS)  # let the lines of a busy moment gather
            self._write_waiting()

    def _write_waiting(self) -> None:
        lines = self._source.lines
        batch: list[str] = []
        with contextlib.suppress(IndexError):
            while True:
                batch.append(lines.popleft())
        if batch:
            with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: nowhere to say it
                self._stream.write("\n".join(batch) + "\n")
                self._stream.flush()

    def stop(self) -> None:
        """Write what is queued, then end; a stderr stuck for seconds is given up on (the thread
        is a daemon: it cannot keep the process alive)."""
        if self._source.dropped:
            self._source.lines.append(self._source.dropped_note())
            self._source.dropped = 0
        self._stopping = True
        self._source.wake.set()
        self.join(5)


_writer: _Writer | None = None


def _stop_writer() -> None:
    """Write what is queued and stop the writer thread (at exit, or before configuring again)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log line to stderr (or `stream`) in the chosen format.

    Lines are written by a thread of their own: a write to stderr blocks whenever the pipe or
    file behind it is slow (journald busy, the kernel flushing dirty pages), and on the event loop
    that stalled every request in flight (bench/api.py: 60-100 ms p99 at 6,000 req/s while the
    server's own time per request stayed under 1 ms). The writer keeps their order.
    """
    # Nothing we print uses the process id, process or thread names; LogRecord would otherwise
    # look them up (a getpid() system call) for every line.
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False
    # Nor the file and line of the call: without this every record walks the stack to find its
    # caller (py-spy: 3 % of a cached API request, for the access log line).
    logging._srcfile = None
    global _writer
    _stop_writer()
    handler = _QueuedLines()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    _writer = _Writer(handler, stream or sys.stderr)
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers would print a second, differently shaped line per event.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One "listening on" line per port comes from streamplat.server; uvicorn's startup chatter
    # would repeat four times.
    logging.getLogger("uvicorn.error").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


atexit.register(_stop_writer)
