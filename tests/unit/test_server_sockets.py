"""The listening sockets `streamplat serve` makes: accepted connections must not wait for Nagle."""

from __future__ import annotations

import asyncio
import socket

from streamplat.server import bind_sockets


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
