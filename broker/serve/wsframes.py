"""Bridging h11 and trio-websocket, checking what clients send, and writing pre-built
frames.

trio-websocket cannot answer plain HTTP, so the server parses every request with h11,
checks an upgrade (`handshake_problem`: wsproto accepts any ``Sec-WebSocket-Key`` and
raises on some odd header bytes), and hands it over by replaying the request bytes
(`ReplayStream`) into the public ``wrap_server_stream``. trio-websocket then owns the
handshake, the reader task, pings and the close handshake.

What a client sends goes through `InboundFrames` on its way to trio-websocket: a
violation of RFC 6455 (or a frame that declares more than the endpoint accepts) ends the
connection with a close frame carrying the right code (1002, 1007, 1009), where wsproto
alone ends it with a bare TCP close, and only after reading a whole oversized message.

Frames go out another way: ``send_message`` builds (and copies) the frame per client,
which we measured at 3.4x the CPU of writing one pre-built frame to every client
(``python -m benchmarks fanout``, docs/performance). `send_prebuilt` writes our bytes
under the connection's own send lock, so they never interleave with a pong or close
frame. That lock is an internal of
trio-websocket: the version is pinned in pyproject.toml and tests/test_wsframes.py
checks the assumption. This is the one module that touches trio-websocket's and
trio's internals (``_stream``, ``_stream_lock``, ``SocketType._sock``), which is why it
is kept whole past 400 lines: everything that depends on them is in one place.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import socket
import struct
from dataclasses import dataclass

import h11
import trio
from trio_websocket import WebSocketConnection

from broker.core.frame import Message
from broker.serve.http import Response, error, header
from broker.serve.tlsstream import TlsStream

GOING_AWAY = 1001  # never 1000: the Grafana panel does not reconnect after a normal close
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007  # a text message that is not UTF-8
POLICY_VIOLATION = 1008  # the client's signed token expired
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
CLOSE_GRACE = 1.0  # seconds to get a close frame out, and to let the client read it

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
MAX_CONTROL_PAYLOAD = 125
# Close codes a client may send: wsproto's list (it fails the connection on any other
# below 3000), and the registered ranges for libraries (3000-3999) and private use.
CLIENT_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013)
) | frozenset(range(3000, 5000))


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame; ``reason`` is cut to fit a control frame."""
    payload = struct.pack(">H", code) + reason.encode()[: MAX_CONTROL_PAYLOAD - 2]
    return bytes((0x88, len(payload))) + payload


# -- the opening handshake ----------------------------------------------------------


def is_websocket_upgrade(request: h11.Request) -> bool:
    return header(request, b"upgrade").lower() == "websocket"


def handshake_problem(request: h11.Request) -> Response | None:
    """The refusal of an upgrade request trio-websocket must not be handed (400; 426 for
    a version other than 13), or None. RFC 6455 4.2.1."""
    values: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        values.setdefault(name, []).append(value)
    if request.method != b"GET":
        return _bad_handshake("a WebSocket upgrade must be a GET request")
    version = values.get(b"sec-websocket-version", [])
    if version != [b"13"]:
        status, problem = (400, "missing") if not version else (426, "not 13")
        return error(
            "unsupported_version",
            f"header Sec-WebSocket-Version is {problem}: this server speaks WebSocket version 13",
            status=status,
            sec_websocket_version="13",
        )
    keys = values.get(b"sec-websocket-key", [])
    if len(keys) != 1 or not _is_websocket_key(keys[0]):
        return _bad_handshake(
            "header Sec-WebSocket-Key must be the base64 encoding of 16 "
            "bytes (24 characters), sent once"
        )
    for name in (b"connection", b"sec-websocket-protocol", b"sec-websocket-extensions"):
        if not all(value.isascii() for value in values.get(name, [])):
            return _bad_handshake(f"header {name.decode()} must be ASCII")
    tokens = b",".join(values.get(b"connection", [])).split(b",")
    if not any(token.strip().lower() == b"upgrade" for token in tokens):
        return _bad_handshake("header Connection must include 'Upgrade'")
    try:
        for host in values.get(b"host", []):
            host.decode("idna")  # as wsproto does, which raises on an odd name
    except UnicodeError:
        return _bad_handshake("header Host is not a valid host name")
    if not values.get(b"host"):
        return _bad_handshake("header Host is missing")
    return None


def _is_websocket_key(key: bytes) -> bool:
    try:
        return len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def _bad_handshake(message: str) -> Response:
    return error("bad_handshake", message)


def request_bytes(request: h11.Request, trailing: bytes) -> bytes:
    """The raw bytes of an upgrade request that h11 has already consumed."""
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in request.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + trailing


# -- what clients send ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a client's connection is failed: the close code and a short reason."""

    code: int
    reason: str


class InboundFrames:
    """Checks the bytes a client sends, frame by frame, against RFC 6455 and a message
    size limit; sans I/O. Binary payloads are only counted; text and close payloads are
    unmasked to check their UTF-8. Everything is decided as early as possible: a frame
    that declares too much is refused at its header, before any of its payload.

    After a close frame from the client nothing more is checked: the close handshake is
    trio-websocket's.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.violation: Violation | None = None
        self._head = bytearray()  # the header being read, until it is complete
        self._in_payload = False
        self._opcode = 0  # of the frame whose payload is being read
        self._fin = True
        self._mask = b""
        self._left = 0  # payload bytes of that frame still to come
        self._read = 0  # and already read (where the mask stands)
        self._message = 0  # TEXT or BINARY while a message is unfinished, else 0
        self._message_size = 0
        self._text: codecs.IncrementalDecoder | None = None
        self._close = bytearray()  # the payload of a close frame
        self._closed = False

    def feed(self, data: bytes | bytearray) -> int:
        """How many leading bytes of ``data`` may be handed on: all of them, or after the
        first violation (`violation` says which) those before the frame at fault."""
        if self.violation is not None:
            return 0
        if self._closed:
            return len(data)
        frame_start, pos, end = 0, 0, len(data)
        while pos < end:
            if self._in_payload:
                take = min(self._left, end - pos)
                problem = self._payload(data[pos : pos + take])
                pos += take
            else:
                if not self._head:
                    frame_start = pos
                take = min(self._header_size() - len(self._head), end - pos)
                self._head += data[pos : pos + take]
                pos += take
                problem = self._header()
            if problem is not None:
                self.violation = problem
                return frame_start
            if self._closed:
                return end
        return end

    def _header_size(self) -> int:
        if len(self._head) < 2:
            return 2
        extended = {126: 2, 127: 8}.get(self._head[1] & 0x7F, 0)
        return 2 + extended + 4  # every client frame is masked (checked in _start)

    def _header(self) -> Violation | None:
        """Check what is known of the header; start the payload once it is complete."""
        if len(self._head) == 2:
            problem = self._start(self._head[0], self._head[1])
            if problem is not None:
                return problem
        if len(self._head) < self._header_size():
            return None
        head, self._head = bytes(self._head), bytearray()
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack_from(">H", head, 2)
            if length < 126:
                return Violation(PROTOCOL_ERROR, "frame length not minimally encoded")
        elif length == 127:
            (length,) = struct.unpack_from(">Q", head, 2)
            if length >> 63:
                return Violation(PROTOCOL_ERROR, "64-bit frame length with the top bit set")
            if length <= 0xFFFF:
                return Violation(PROTOCOL_ERROR, "frame length not minimally encoded")
        opcode = head[0] & 0x0F
        if not opcode & 0x8:
            if self._message_size + length > self.max_message:
                return Violation(MESSAGE_TOO_BIG, f"a message over {self.max_message} bytes")
            if opcode != CONTINUATION:
                self._message, self._message_size = opcode, 0
                self._text = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
            self._message_size += length
        self._opcode, self._fin, self._mask = opcode, bool(head[0] & 0x80), head[-4:]
        self._left, self._read, self._close = length, 0, bytearray()
        self._in_payload = True
        return self._end_frame() if length == 0 else None

    def _start(self, first: int, second: int) -> Violation | None:
        """The checks the first two bytes of a header allow."""
        opcode, control = first & 0x0F, bool(first & 0x08)
        if first & 0x70:
            return Violation(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if opcode not in OPCODES:
            return Violation(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not second & 0x80:
            return Violation(PROTOCOL_ERROR, "client frames must be masked")
        if control and not first & 0x80:
            return Violation(PROTOCOL_ERROR, "fragmented control frame")
        if control and second & 0x7F > MAX_CONTROL_PAYLOAD:
            return Violation(PROTOCOL_ERROR, "control frame payload over 125 bytes")
        if opcode == CONTINUATION and not self._message:
            return Violation(PROTOCOL_ERROR, "continuation frame without a message to continue")
        if opcode in (TEXT, BINARY) and self._message:
            return Violation(PROTOCOL_ERROR, "new message before the last one was finished")
        return None

    def _payload(self, chunk: bytes | bytearray) -> Violation | None:
        if self._opcode == CLOSE:
            self._close += _unmask(chunk, self._mask, self._read)
        elif self._text is not None and not self._opcode & 0x8:
            try:
                self._text.decode(_unmask(chunk, self._mask, self._read))
            except UnicodeDecodeError:
                return Violation(INVALID_PAYLOAD, "text message is not UTF-8")
        self._read += len(chunk)
        self._left -= len(chunk)
        return self._end_frame() if self._left == 0 else None

    def _end_frame(self) -> Violation | None:
        self._in_payload = False
        if self._opcode == CLOSE:
            problem = close_problem(bytes(self._close))
            self._closed = problem is None
            return problem
        if self._opcode & 0x8 or not self._fin:
            return None
        text, self._text, self._message, self._message_size = self._text, None, 0, 0
        if text is not None:
            try:
                text.decode(b"", final=True)
            except UnicodeDecodeError:
                return Violation(INVALID_PAYLOAD, "text message is not UTF-8")
        return None


def close_problem(payload: bytes) -> Violation | None:
    """What is wrong with the payload of a client's close frame, if anything."""
    if not payload:
        return None
    if len(payload) == 1:
        return Violation(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from(">H", payload)
    if code not in CLIENT_CLOSE_CODES:
        return Violation(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return Violation(INVALID_PAYLOAD, "close reason is not UTF-8")
    return None


def _unmask(data: bytes | bytearray, mask: bytes, offset: int) -> bytes:
    """``data`` XOR the mask, ``data`` starting ``offset`` bytes into the payload."""
    if not data:
        return b""
    turn = offset % 4
    key = (mask[turn:] + mask[:turn]) * (len(data) // 4 + 1)
    value = int.from_bytes(data, "little") ^ int.from_bytes(key[: len(data)], "little")
    return value.to_bytes(len(data), "little")


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from ``stream`` (``prefix``), then
    reads on. With ``frames``, what the client sends after the request head
    (``trailing``, then the stream) is checked on its way: on a violation the client
    gets a close frame with the code (`fail`), and trio-websocket an end of stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        prefix: bytes,
        frames: InboundFrames | None = None,
        trailing: bytes = b"",
    ) -> None:
        self.stream = stream
        self.frames = frames
        self._connection: WebSocketConnection | None = None
        self._opened = trio.Event()
        self._failed = False
        self._prefix = prefix + self._checked(trailing)

    @property
    def violation(self) -> Violation | None:
        return self.frames.violation if self.frames is not None else None

    def opened(self, ws: WebSocketConnection) -> None:
        """The handshake is done: a close frame may now be written on ``ws``."""
        self._connection = ws
        self._opened.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = max_bytes or len(self._prefix)
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        if self.violation is None:
            received = self._checked(await self.stream.receive_some(max_bytes))
            if received or self.violation is None:
                return received
        await self.fail()
        return b""

    def _checked(self, data: bytes | bytearray) -> bytes | bytearray:
        if self.frames is None or not data:
            return data
        accepted = self.frames.feed(data)
        return data if accepted == len(data) else data[:accepted]

    async def fail(self) -> None:
        """Send the close frame of the violation (once, after the handshake, under the
        connection's send lock so it never lands inside another frame), then end our
        side of the TCP connection: nothing may follow a close frame."""
        violation = self.violation
        if self._failed or violation is None:
            return
        self._failed = True
        await self._opened.wait()
        assert self._connection is not None
        await write_close(self._connection, violation.code, violation.reason)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def linger(stream: trio.abc.ReceiveStream, grace: float = CLOSE_GRACE) -> None:
    """Read and drop what a failed client still sends until it closes, within ``grace``:
    closing with unread data resets the connection, and the client may then lose the
    close frame before reading it."""
    with (
        trio.move_on_after(grace),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        while await stream.receive_some(64 * 1024):
            pass


# -- writing ------------------------------------------------------------------------


def direct_access(ws: WebSocketConnection) -> tuple[trio.Semaphore, socket.socket] | None:
    """The connection's send lock and its OS socket, for writing without a task
    (`broker.serve.delivery.DirectWriter`); None when that is not possible here.

    trio-websocket's lock belongs to the task that takes it, so a write begun by one task
    could not be finished by another: it is replaced, once and while free, by a
    ``Semaphore(1)``, which trio-websocket uses the same way (``async with``). The OS
    socket is trio's internal ``_sock``: writing through it (never a bare fd number,
    which a new connection may reuse) fails cleanly once trio has closed the socket.

    Over TLS (a `broker.serve.tlsstream.TlsStream` under the connection) the socket is its
    ``ssl.SSLSocket``, which encrypts what is written to it; any other stream (one
    that would encrypt elsewhere, as ``trio.SSLStream`` does) gets None: every byte
    must go through the encryption.
    """
    stream = _socket_stream(ws)
    if isinstance(stream, TlsStream):
        sock: object = stream.tls
    elif isinstance(stream, trio.SocketStream):
        sock = getattr(stream.socket, "_sock", None)
    else:
        return None
    current: trio.Semaphore | trio.StrictFIFOLock = ws._stream_lock
    if isinstance(current, trio.Semaphore):
        lock = current
    elif current.locked():
        return None
    else:
        lock = trio.Semaphore(1)
        ws._stream_lock = lock  # type: ignore[assignment]  # used alike: ``async with``
    return (lock, sock) if isinstance(sock, socket.socket) else None


def _socket_stream(ws: WebSocketConnection) -> trio.abc.Stream:
    stream = ws._stream
    return stream.stream if isinstance(stream, ReplayStream) else stream


def raise_unsent_bound(ws: WebSocketConnection, nbytes: int) -> None:
    """Let the kernel hold up to ``nbytes`` unsent on this connection
    (``TCP_NOTSENT_LOWAT``; `broker.serve.delivery.unsent_bound` says how much)."""
    stream = _socket_stream(ws)
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, nbytes)


def transport(ws: WebSocketConnection) -> trio.abc.Stream:
    """The stream under ``ws``: what a sender finishes a frame on (after a
    `broker.serve.delivery.DirectWriter` wrote part of it) and aborts."""
    return ws._stream


async def abort(ws: WebSocketConnection) -> None:
    """Drop the connection at once, without a close handshake (a client too slow to
    take one)."""
    await trio.aclose_forcefully(ws._stream)


async def send_prebuilt(ws: WebSocketConnection, message: Message) -> None:
    """Write one complete, pre-built WebSocket frame (its buffers, in order).

    Raises trio.BrokenResourceError / ClosedResourceError when the client is gone.
    If cancelled part-way, a partial frame is on the wire: the caller must abort the
    connection, not reuse it.
    """
    async with ws._stream_lock:
        await send_parts(ws._stream, message)


async def send_parts(stream: trio.abc.SendStream, parts: Message) -> None:
    """Write the buffers of one message, in order."""
    for part in parts:
        await stream.send_all(part)


async def write_close(
    ws: WebSocketConnection, code: int, reason: str = "", grace: float = CLOSE_GRACE
) -> None:
    """Write a close frame under the connection's send lock and end our side of the TCP
    connection (FIN), within ``grace``; the caller closes the socket."""
    stream = _socket_stream(ws)
    with (
        trio.move_on_after(grace),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        async with ws._stream_lock:
            await stream.send_all(close_frame(code, reason))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()


async def close_with(ws: WebSocketConnection, code: int, grace: float = 0.5) -> None:
    """Send a close frame with ``code`` and drop the connection, within ``grace``, even
    when cancelled."""
    with trio.CancelScope(shield=True):
        with (
            trio.move_on_after(grace),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await send_prebuilt(ws, (close_frame(code),))
        await trio.aclose_forcefully(ws._stream)


async def close_going_away(ws: WebSocketConnection, grace: float = 0.5) -> None:
    """Tell the client we are going away (1001) and drop the connection, within ``grace``."""
    await close_with(ws, GOING_AWAY, grace)
