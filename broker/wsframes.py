"""Bridging h11 and trio-websocket, and writing pre-built frames.

trio-websocket cannot answer plain HTTP, so the server parses every request with h11
and hands a WebSocket upgrade over by replaying the request bytes (`ReplayStream`) into
the public ``wrap_server_stream``. trio-websocket then owns the handshake, the reader
task, pings and the close handshake.

Frames go out another way: ``send_message`` builds (and copies) the frame per client,
which ``NOTES.md`` measured at 3.4x the CPU of writing one pre-built frame to every
client. `send_prebuilt` writes our bytes under the connection's own send lock, so they
never interleave with a pong or close frame. That lock is an internal of
trio-websocket: the version is pinned in pyproject.toml and tests/test_wsframes.py
checks the assumption.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import h11
import trio
from trio_websocket import WebSocketConnection

from broker.http import header

GOING_AWAY = 1001  # never 1000: the Grafana panel does not reconnect after a normal close


def close_frame(code: int) -> bytes:
    return bytes((0x88, 2)) + struct.pack(">H", code)


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from ``stream``, then reads on."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = max_bytes or len(self._prefix)
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def request_bytes(request: h11.Request, trailing: bytes) -> bytes:
    """The raw bytes of an upgrade request that h11 has already consumed."""
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in request.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + trailing


def is_websocket_upgrade(request: h11.Request) -> bool:
    return header(request, b"upgrade").lower() == "websocket"


def direct_access(ws: WebSocketConnection) -> tuple[trio.Semaphore, socket.socket] | None:
    """The connection's send lock and its OS socket, for writing without a task
    (`broker.streams.DirectWriter`); None when that is not possible here.

    trio-websocket's lock belongs to the task that takes it, so a write begun by one task
    could not be finished by another: it is replaced, once and while free, by a
    ``Semaphore(1)``, which trio-websocket uses the same way (``async with``). The OS
    socket is trio's internal ``_sock``: writing through it (never a bare fd number,
    which a new connection may reuse) fails cleanly once trio has closed the socket.
    """
    lock = ws._stream_lock
    if not isinstance(lock, trio.Semaphore):
        if lock.locked():
            return None
        lock = ws._stream_lock = trio.Semaphore(1)
    stream = ws._stream
    if isinstance(stream, ReplayStream):
        stream = stream.stream
    sock = getattr(getattr(stream, "socket", None), "_sock", None)
    return (lock, sock) if isinstance(sock, socket.socket) else None


async def send_prebuilt(ws: WebSocketConnection, message: bytes) -> None:
    """Write one complete, pre-built WebSocket frame.

    Raises trio.BrokenResourceError / ClosedResourceError when the client is gone.
    If cancelled part-way, a partial frame is on the wire: the caller must abort the
    connection, not reuse it.
    """
    async with ws._stream_lock:
        await ws._stream.send_all(message)


async def close_going_away(ws: WebSocketConnection, grace: float = 0.5) -> None:
    """Tell the client we are going away (1001) and drop the connection, within ``grace``."""
    with trio.CancelScope(shield=True):
        with (
            trio.move_on_after(grace),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await send_prebuilt(ws, close_frame(GOING_AWAY))
        await trio.aclose_forcefully(ws._stream)
