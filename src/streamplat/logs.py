"""Logging set-up: text or JSON lines, each carrying the request id and stream id when known."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator

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


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in the chosen format."""
    # Nothing we print uses the process id, process or thread names; LogRecord would otherwise
    # look them up (a getpid() system call) for every line.
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False
    # Nor the file and line of the call: without this every record walks the stack to find its
    # caller (py-spy: 3 % of a cached API request, for the access log line).
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
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
