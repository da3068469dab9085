"""The listening sockets `streamplat serve` makes: accepted connections must not wait for Nagle."""

from __future__ import annotations

import asyncio
import socket

import pytest
from litestar import Litestar

from streamplat.config import ConfigError, load
from streamplat.server import bind_sockets, http_parser, loop_factory, uvicorn_config


async def test_accepted_connections_have_nagle_off() -> None:
    sockets = bind_sockets("127.0.0.1", 0, "test")
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer.get_extra_info("socket"))

    server = await asyncio.start_server(on_connect, sock=sockets[0])
    try:
        port = sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = await asyncio.wait_for(accepted.get(), 10)
        # Without TCP_NODELAY a kept-alive client waits ~40 ms (delayed ACK) for every small reply.
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_asyncio_loop_and_httptools_by_default_uvloop_and_h11_on_request() -> None:
    import uvloop

    default = load(None, environ={})
    assert loop_factory(default) is None  # asyncio's own loop
    for choice in ("auto", "uvloop"):
        chosen = load(None, environ={"STREAMPLAT_SERVER__LOOP": choice})
        assert loop_factory(chosen) is uvloop.new_event_loop
    assert http_parser(default) == "httptools"
    assert uvicorn_config(Litestar(), default).http.__name__ == "LimitedHttpToolsProtocol"
    forced = load(None, environ={"STREAMPLAT_SERVER__LOOP": "asyncio", "STREAMPLAT_SERVER__HTTP": "h11"})
    assert loop_factory(forced) is None
    assert http_parser(forced) == "h11"
    assert uvicorn_config(Litestar(), forced).http.__name__ == "LimitedH11Protocol"


def test_unknown_loop_or_parser_is_a_config_error() -> None:
    for key in ("LOOP", "HTTP"):
        with pytest.raises(ConfigError, match=f"server.{key.lower()}"):
            load(None, environ={f"STREAMPLAT_SERVER__{key}": "tokio"})
