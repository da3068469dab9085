"""HTTP/1.1 connection limits uvicorn leaves to the parser: header size and header time.

uvicorn reads requests with one of two parsers. h11 refuses headers larger than its buffer limit,
but uvicorn answers that with a plain-text 400 and closes with the rest of the request unread,
which resets the connection under the client before it reads the answer. httptools has no limit
at all. Neither parser bounds how long a client may take to send its headers, so a client that
opens connections and trickles bytes holds them for ever (slowloris).

`http_protocol()` returns uvicorn's protocol class for the chosen parser with both limits added:

- headers (request line included) larger than `server.max_header_bytes` are answered with
  **431** and the spec's JSON error body, then the connection is closed after a short lingering
  close: our side is shut for writing first, and what the client still sends is read and
  dropped for up to `LINGER_SECONDS`, so it reads the 431 instead of a connection reset;
- a request whose headers are not complete `server.header_timeout_seconds` after its first byte
  arrived (or a new connection that sends nothing for that long) is answered with **408**
  (if it sent anything) and closed. Idle keep-alive connections between requests are governed
  by uvicorn's keep-alive timeout instead.

With httptools, `http_protocol(direct=...)` also lets one port answer some requests itself: the
Stream App's live /hls/ files in memory (hls/asgi.py `DirectHls`). Such a GET/HEAD is written
from `on_headers_complete`, in one write, with the bytes uvicorn would write for the ASGI
answer, when that keeps every guarantee of the ASGI path (`_answer_directly` says which);
every other request goes through uvicorn's scope, task and ASGI app as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, cast

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from streamplat.errors import error_body

log = logging.getLogger("streamplat.http")

LINGER_SECONDS = 2.0
"""After a 431/408, how long what the client still sends is read and dropped before closing."""


class _HeaderGuard:
    """The limits of one connection; owned by its protocol, which calls in at each step."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_header_bytes: int, header_timeout: float) -> None:
        self.loop = loop
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.received = 0  # bytes of the request whose headers are awaited
        self.rejected = False
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        self.awaiting()

    def awaiting(self) -> None:
        """Headers are awaited: start the clock unless it already runs."""
        if self._timer is None and not self.rejected:
            self._timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def complete(self) -> None:
        """The headers arrived in time."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.received = 0

    def too_large(self) -> bool:
        return self.received > self.max_header_bytes

    def connection_lost(self) -> None:
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing() or self.rejected:
            return
        if self.received:
            log.info("request headers from %s incomplete after %.1f s: 408", self.client, self.header_timeout)
            self.reject(408, f"Request headers not complete within {self.header_timeout:g} s")
        else:
            self.transport.close()

    def reject(self, status: int, message: str) -> None:
        """Answer `status` with the spec's error body and close the connection, lingering."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.rejected:
            return
        self.rejected = True
        self.complete()
        body = msgspec.json.encode(error_body(status, message))
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        transport.write(head + body)
        # Closing with unread request bytes makes the kernel send a reset, and the client may
        # never see the answer; shut our side and drop what still comes for a moment instead.
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def header_block_size(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """Bytes of a request line and its header lines as sent ("Name: value\r\n" each, final CRLF)."""
    size = len(method) + 1 + len(target) + len(b" HTTP/1.1\r\n") + 2
    return size + sum(len(name) + 2 + len(value) + 2 for name, value in headers)


class _Guarded(asyncio.Protocol):
    """What both parsers' protocols share: the limits (set per server by `http_protocol`) and a
    `_HeaderGuard` that follows the connection from made to lost. Comes before uvicorn's
    protocol in the bases, so `super()` here is uvicorn's."""

    max_header_bytes = 65_536
    header_timeout = 10.0
    loop: asyncio.AbstractEventLoop  # set by uvicorn's protocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = _HeaderGuard(self.loop, self.max_header_bytes, self.header_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvicorn serves TCP only; uvloop's transports are not asyncio.Transport subclasses.
        self.guard.connection_made(cast("asyncio.Transport", transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.connection_lost()
        super().connection_lost(exc)


class LimitedH11Protocol(_Guarded, H11Protocol):
    """uvicorn's h11 protocol with the header size answered by 431 and a header timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = self.limited_conn = _Connection(self.max_header_bytes)

    def data_received(self, data: bytes) -> None:
        if self.guard.rejected:
            return  # lingering: read and drop
        # IDLE: h11 waits for the next request's headers (it leaves IDLE once they are parsed).
        if self.conn.their_state is h11.IDLE:
            self.guard.received += len(data)
            self.guard.awaiting()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self.guard.complete()

    def shutdown(self) -> None:
        if self.guard.rejected:  # answered already; h11 may be mid-request and refuse to close
            self.transport.close()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every h11 protocol error with 400; headers too large are ours to answer.
        if self.limited_conn.headers_too_large:
            _reject_oversized(self.guard)
            return
        super().send_400_response(msg)


class _Connection(h11.Connection):
    """h11's connection, refusing headers over the limit whether they arrive in pieces (h11's
    own buffer limit) or whole (which h11 accepts at any size), and remembering why it refused."""

    headers_too_large = False

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self.headers_too_large = True
            raise
        if isinstance(event, h11.Request):
            size = header_block_size(event.method, event.target, event.headers.raw_items())
            if size > self.max_header_bytes:
                self.headers_too_large = True
                raise h11.RemoteProtocolError("request headers too large", error_status_hint=431)
        return event


def _reject_oversized(guard: _HeaderGuard) -> None:
    log.info("request headers from %s over %d bytes: 431", guard.client, guard.max_header_bytes)
    guard.reject(431, f"Request headers are larger than {guard.max_header_bytes} bytes")


DirectAnswer = Callable[
    [str, str, bytes, list[tuple[bytes, bytes]], tuple[str, int] | None], tuple[bytes, bytes] | None
]
"""(method, path, query, headers, client) -> (header lines, body) of a 200 answer, or None."""

# A request with any of these goes through ASGI: a body to read, a Range the ASGI path decides.
_NOT_DIRECT = frozenset((b"content-length", b"transfer-encoding", b"expect", b"range"))


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop httptools; it surfaces as an HttpParserError."""


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        import httptools
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # httptools is optional: h11 serves without it
        return None

    class LimitedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
        """uvicorn's httptools protocol with a header size limit (431) and a header timeout.

        httptools has no limit and hands over headers only once each is complete, so headers
        still arriving are bounded by the raw bytes received while they are awaited, and
        complete ones by their exact size when httptools reports them.
        """

        direct: DirectAnswer | None = None  # set per server by `http_protocol`

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.awaiting_headers = True
            self.headers_too_large = False
            self.answered_directly = False  # the request being parsed was answered by `direct`
            self.wrote_directly = False  # ... and one was in this data_received
            self.closed_directly = False  # a direct answer closed the connection
            self.date_source: list[tuple[bytes, bytes]] | None = None
            self.date_lines = b""
            # The keep-alive timeout after direct answers: one timer per timeout, not per request.
            # uvicorn cancels its timer on every read and arms a new one after every response;
            # for live HLS that was 12 % of the server's samples (py-spy, bench/llhls.py reqs).
            # This one is ours alone: it is pushed back by moving `idle_since`, and when it
            # fires it closes the connection only if nothing came for the whole timeout.
            self.idle_since: float | None = None  # answered directly and waiting since; None: busy
            self.idle_timer: asyncio.TimerHandle | None = None

        def data_received(self, data: bytes) -> None:
            if self.guard.rejected:
                return  # lingering: read and drop
            self.idle_since = None
            if self.awaiting_headers:
                self.guard.received += len(data)
            super().data_received(data)
            if self.awaiting_headers and self.guard.received and not self.transport.is_closing():
                if not self.guard.too_large():
                    # Headers begun and not complete: their clock runs (from their first read).
                    # Not started before parsing, so a request read whole costs no timer.
                    self.guard.awaiting()
                elif self.cycle is None or self.cycle.response_complete:
                    _reject_oversized(self.guard)
                else:  # a pipelined request while a response is on the wire: no room for an answer
                    self.transport.close()
            if self.wrote_directly:
                self.wrote_directly = False
                # What uvicorn does once a response is complete and nothing else is queued: wait
                # for the next request for at most the keep-alive timeout.
                idle = self.cycle is None or self.cycle.response_complete
                if idle and self.timeout_keep_alive_task is None and not self.transport.is_closing():
                    self.idle_since = self.loop.time()
                    if self.idle_timer is None:
                        self.idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

        def _idle_check(self) -> None:
            self.idle_timer = None
            if self.idle_since is None or self.transport.is_closing():
                return  # a request came: whoever answers it arms the next wait
            left = self.idle_since + self.timeout_keep_alive - self.loop.time()
            if left > 0:
                self.idle_timer = self.loop.call_later(left, self._idle_check)
            else:
                self.transport.close()  # what uvicorn's timeout_keep_alive_handler does

        def connection_lost(self, exc: Exception | None) -> None:
            if self.idle_timer is not None:
                self.idle_timer.cancel()
                self.idle_timer = None
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self.awaiting_headers = False
            self.guard.complete()
            method = self.parser.get_method()
            if header_block_size(method, self.url, self.headers) > self.max_header_bytes:
                self.headers_too_large = True
                raise _HeadersTooLarge
            if self.direct is not None and (self.closed_directly or self._answer_directly(method)):
                return  # answered, or after a direct answer that closed: dropped like uvicorn's
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            if self.answered_directly or self.closed_directly:
                self.answered_directly = False  # answered already; there is no ASGI cycle
            else:
                super().on_message_complete()
            # The next request's headers are awaited; the clock starts with its first byte.
            self.awaiting_headers = True
            self.guard.received = 0

        def _answer_directly(self, method: bytes) -> bool:
            """Write `direct`'s answer now if it has one and that is safe: nothing before this
            request is still being answered (pipelining order), the transport takes writes
            (flow control), the request has no body, no Range and no upgrade. Else False:
            uvicorn goes on as usual (scope, task, ASGI app)."""
            assert self.direct is not None
            url = self.url
            if (
                method not in (b"GET", b"HEAD")
                or not url.startswith(b"/hls/")
                or not (self.cycle is None or self.cycle.response_complete)
                or self.flow.write_paused
                or self.transport.is_closing()
                or self.limit_concurrency is not None
                or self.parser.should_upgrade()
            ):
                return False
            forwarded: list[bytes] = []
            for name, value in self.headers:
                if name in _NOT_DIRECT:
                    return False
                if name == b"x-forwarded-for":
                    forwarded.append(value)
            client = self.client
            if forwarded:
                client = self._forwarded_client(forwarded)
                if client is None:
                    return False
            parsed = httptools.parse_url(url)
            raw_path: bytes = parsed.path
            if b"%" in raw_path:  # names the store answers never need escapes; ASGI unquotes
                return False
            try:
                path = raw_path.decode("ascii")  # else uvicorn's own decoding answers 400, as before
                answer = self.direct(method.decode(), path, parsed.query or b"", self.headers, client)
            except UnicodeDecodeError:
                return False
            except Exception:  # a bug here must not turn into the parser's 400: ASGI answers
                log.exception("direct answer to %s failed; left to the app", path)
                return False
            if answer is None:
                return False
            head, body = answer
            keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            defaults = self.server_state.default_headers
            if defaults is not self.date_source:  # uvicorn renews the list (Date) every second
                self.date_source = defaults
                self.date_lines = b"".join(b"%s: %s\r\n" % (n.lower(), v) for n, v in defaults)
            first = b"".join(
                (
                    STATUS_LINE[200],
                    self.date_lines,
                    head,
                    b"" if keep_alive else b"connection: close\r\n",
                    b"\r\n",
                )
            )
            if body:
                self.transport.writelines((first, body))
            else:
                self.transport.write(first)
            self.server_state.total_requests += 1
            self.answered_directly = True
            if keep_alive:
                self.wrote_directly = True
            else:
                self.closed_directly = True
                self.transport.close()
            return True

        def _forwarded_client(self, forwarded: list[bytes]) -> tuple[str, int] | None:
            """The client address uvicorn's ProxyHeadersMiddleware puts in the ASGI scope of a
            request with X-Forwarded-For (viewers are counted by it), or None if this uvicorn's
            middleware cannot be asked (then the request goes the ASGI way)."""
            client = self.client
            proxy = self.app  # uvicorn's outermost app: ProxyHeadersMiddleware unless proxy_headers is off
            if not isinstance(proxy, ProxyHeadersMiddleware):
                return client
            trusted: Any = getattr(proxy, "trusted_hosts", None)
            address = getattr(trusted, "get_trusted_client_address", None)
            if address is None:
                return None
            if client is None or client[0] not in trusted:
                return client
            host, port = address(b", ".join(forwarded).decode("latin1"))
            return (host, port) if host else client

        def send_400_response(self, msg: str) -> None:
            if self.headers_too_large:
                _reject_oversized(self.guard)
                return
            super().send_400_response(msg)

    return LimitedHttpToolsProtocol


def http_protocol(
    parser: str, *, max_header_bytes: int, header_timeout: float, direct: DirectAnswer | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class for `parser` ("auto": httptools when installed, else h11;
    "h11"; "httptools") with the header size and header time limits, for `uvicorn.Config(http=...)`.

    With `direct` (httptools only; h11 ignores it and serves everything through ASGI), GET and
    HEAD requests under /hls/ that `direct` answers are written straight to the connection."""
    base: type[asyncio.Protocol] | None
    if parser == "h11":
        base = LimitedH11Protocol
    elif parser in ("httptools", "auto"):
        base = _httptools_protocol()
        if base is None:
            if parser == "httptools":
                raise RuntimeError("httptools is not installed")
            base = LimitedH11Protocol
    else:
        raise ValueError(f"unknown HTTP parser {parser!r}")
    limits: dict[str, Any] = {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout}
    if direct is not None and base is not LimitedH11Protocol:
        limits["direct"] = staticmethod(direct)
    return type(base.__name__, (base,), limits)


__all__ = ["LINGER_SECONDS", "DirectAnswer", "http_protocol"]
