"""A received frame, shared by every client of its camera.

The payload arrives once from ZeroMQ and is never copied per client: each output
builds its message once per frame (``websocket_message``, ``mux_message``,
``mjpeg_part``) and every client of the camera writes those same bytes. A large
payload is not copied even once: its message is the header and the payload, two
buffers written one after the other (`Message`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from broker.protocol import mux

Buffer = bytes | bytearray | memoryview
Message = tuple[Buffer, ...]  # the buffers of one message, written in order
MJPEG_BOUNDARY = "camera-broker-frame"
# Payloads from this size on are not joined to their header: copying a frame of raw 4K
# pixels (17-25 MB) 30 times a second costs a good part of a core in page faults and
# memory. Below it, one joined buffer is one write per client instead of two.
JOIN_BELOW = 256 * 1024


def message(head: bytes, data: Buffer, tail: bytes = b"") -> Message:
    """``head``, ``data`` and ``tail`` as one message: one buffer for a small payload,
    separate buffers (no copy of ``data``) from `JOIN_BELOW` on."""
    if len(data) < JOIN_BELOW:
        return (head + data + tail,)
    return (head, data, tail) if tail else (head, data)


def websocket_binary_header(length: int) -> bytes:
    """RFC 6455 header of one unmasked, final, binary frame of ``length`` bytes.

    Server-to-client frames are not masked, so the same bytes serve every client.
    """
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return struct.pack(">BBH", 0x82, 126, length)
    return struct.pack(">BBQ", 0x82, 127, length)


@dataclass(eq=False, slots=True)
class Frame:
    camera: str
    seq: int
    captured_at: float  # Unix seconds, from the worker's clock
    width: int
    height: int
    format: str
    data: Buffer
    received_at: float  # time.monotonic() when the broker received it
    placeholder: bool = False  # a generated "No Data" image, not from the camera
    # The JPEG made from this frame for browser outputs (a raw format's, while watched).
    derived: Frame | None = field(default=None, repr=False)
    _websocket_message: Message | None = field(default=None, repr=False)
    _mjpeg_part: Message | None = field(default=None, repr=False)
    _mux_message: Message | None = field(default=None, repr=False)

    @classmethod
    def received(
        cls,
        camera: str,
        seq: int,
        captured_at: float,
        width: int,
        height: int,
        format: str,
        data: Buffer,
        *,
        placeholder: bool = False,
    ) -> Frame:
        """A frame entering the broker now (from ZeroMQ, an upload or the "No Data"
        generator): the one place a frame is made, stamped with the monotonic clock."""
        received_at = time.monotonic()
        return cls(camera, seq, captured_at, width, height, format, data, received_at, placeholder)

    @property
    def size(self) -> int:
        return len(self.data)

    def websocket_message(self) -> Message:
        """The whole WebSocket message for this frame, built on first use."""
        if self._websocket_message is None:
            self._websocket_message = message(websocket_binary_header(len(self.data)), self.data)
        return self._websocket_message

    def mux_message(self) -> Message:
        """This frame as one binary message of the multiplexed ``/ws`` endpoint
        (`broker.protocol.mux`), built on first use."""
        if self._mux_message is None:
            head = mux.encode_header(
                self.camera,
                self.seq,
                self.captured_at,
                self.format,
                self.width,
                self.height,
                self.placeholder,
            )
            length = len(head) + len(self.data)
            self._mux_message = message(websocket_binary_header(length) + head, self.data)
        return self._mux_message

    def mjpeg_part(self) -> Message:
        """This frame as one part of a ``multipart/x-mixed-replace`` stream, built on first use."""
        if self._mjpeg_part is None:
            head = (
                f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/{self.format}\r\n"
                f"Content-Length: {len(self.data)}\r\n\r\n"
            ).encode()
            self._mjpeg_part = message(head, self.data, b"\r\n")
        return self._mjpeg_part

    def derive(self, jpeg: bytes) -> Frame:
        """The browser image of this frame, ``jpeg``, as a frame of its own, numbered
        and timed as this one (kept in `derived`)."""
        self.derived = Frame(
            self.camera,
            self.seq,
            self.captured_at,
            self.width,
            self.height,
            "jpeg",
            jpeg,
            self.received_at,
            self.placeholder,
        )
        return self.derived

    def release_messages(self) -> None:
        """Forget the pre-built messages (rebuilt on demand): a frame kept in the
        retention window should not hold its payload two or three times."""
        self.derived = None
        self._websocket_message = None
        self._mjpeg_part = None
        self._mux_message = None
