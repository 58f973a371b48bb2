"""A minimal WebSocket client over a raw trio stream, for tests that must control
exactly how fast a viewer reads (trio-websocket always reads as fast as it can), send
what a well-behaved client would not, and always close their socket (trio-websocket's
client leaves it open when the server closes first)."""

from __future__ import annotations

import base64
import os
import struct

import trio

from benchmarks.churn import parse_server_frame


class RawWebSocket:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.received_bytes = 0

    @classmethod
    async def connect(
        cls, port: int, path: str, extra_headers: str = ""
    ) -> tuple[RawWebSocket, bytes]:
        """Open and handshake; returns the client and the raw response head."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n".encode()
        )
        client = cls(stream)
        while b"\r\n\r\n" not in client.buffer:
            data = await stream.receive_some(4096)
            if not data:
                raise ConnectionError("closed during handshake")
            client.buffer += data
        end = client.buffer.index(b"\r\n\r\n") + 4
        head = bytes(client.buffer[:end])
        del client.buffer[:end]
        return client, head

    async def _fill(self, chunk: int) -> bool:
        data = await self.stream.receive_some(chunk)
        if not data:
            return False
        self.received_bytes += len(data)
        self.buffer += data
        return True

    async def receive(self, chunk: int = 65536, pace: float = 0.0) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None when the server closed the connection.

        With ``pace`` (bytes per second) the client reads no faster than that.
        """
        while True:
            parsed = parse_server_frame(self.buffer)
            if parsed is not None:
                return parsed
            if not await self._fill(chunk):
                return None
            if pace:
                await trio.sleep(chunk / pace)

    async def next_frame(self) -> tuple[int, bytes]:
        """The next (opcode, payload): the server closing the connection fails the test."""
        received = await self.receive()
        assert received is not None, "the server closed the connection"
        return received

    async def send(self, payload: str | bytes, opcode: int | None = None) -> None:
        """Send one masked frame: text for a str, binary for bytes, unless ``opcode``."""
        data = payload.encode() if isinstance(payload, str) else payload
        if opcode is None:
            opcode = 1 if isinstance(payload, str) else 2
        length = len(data)
        if length < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        mask = os.urandom(4)
        key = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
            length, "little"
        )
        await self.stream.send_all(head + mask + masked)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# Opcodes of client frames (RFC 6455).
TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    width: int | None = None,
) -> bytes:
    """A client frame; ``length`` declares another length, ``width`` forces 7, 16 or 64
    bits for it."""
    declared = len(payload) if length is None else length
    width = width or (7 if declared < 126 else 16 if declared < 1 << 16 else 64)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if width == 7:
        head += bytes([mask_bit | declared])
    elif width == 16:
        head += bytes([mask_bit | 126]) + declared.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + declared.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = b"\x37\xfa\x21\x3d"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
