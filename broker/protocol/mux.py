"""The binary frame message of the multiplexed ``/ws`` endpoint (docs/protocol.md,
"Frames"): a big-endian uint16 N, N bytes of a JSON header, then the image, in the
camera's own format (``format``: one of `broker.protocol.wire.FORMATS`; for ``lz4`` the
header's ``width`` and ``height`` are the only record of the raw pixels' size).

One encoder (the broker builds each frame's message once and shares it) and one decoder
(the client library). Pure: no socket, no WebSocket framing.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HEADER_LENGTH = struct.Struct(">H")
FIELDS = ("camera", "seq", "captured_at", "format", "width", "height")


class MuxError(ValueError):
    """A binary message that is not a frame of this format; the text says why."""


@dataclass(frozen=True, slots=True)
class MuxFrame:
    """A decoded frame message: its header fields and the image."""

    camera: str
    seq: int
    captured_at: float  # Unix seconds, from the worker's clock
    format: str
    width: int
    height: int
    image: bytes
    header: Mapping[str, Any]  # the whole JSON header (``placeholder``, and what comes later)

    @property
    def placeholder(self) -> bool:
        return bool(self.header.get("placeholder", False))


def encode_header(
    camera: str,
    seq: int,
    captured_at: float,
    format: str,
    width: int,
    height: int,
    placeholder: bool = False,
) -> bytes:
    """The length prefix and JSON header that go before the image bytes."""
    fields: dict[str, object] = {
        "camera": camera,
        "seq": seq,
        "captured_at": captured_at,
        "format": format,
        "width": width,
        "height": height,
    }
    if placeholder:
        fields["placeholder"] = True
    header = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()
    return HEADER_LENGTH.pack(len(header)) + header


def decode(message: bytes | bytearray | memoryview) -> MuxFrame:
    """Split one binary message into its header and image; `MuxError` when malformed."""
    data = bytes(message)
    if len(data) < HEADER_LENGTH.size:
        raise MuxError("binary message shorter than its header length")
    (length,) = HEADER_LENGTH.unpack_from(data)
    end = HEADER_LENGTH.size + length
    if len(data) < end:
        raise MuxError(f"binary message of {len(data)} bytes, header says {length}")
    try:
        header = json.loads(data[HEADER_LENGTH.size : end])
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        frame = MuxFrame(
            camera=str(header["camera"]),
            seq=int(header["seq"]),
            captured_at=float(header["captured_at"]),
            format=str(header["format"]),
            width=int(header["width"]),
            height=int(header["height"]),
            image=data[end:],
            header=header,
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise MuxError(f"bad frame header: {exc!r}") from None
    if not math.isfinite(frame.captured_at):
        raise MuxError("bad frame header: captured_at is not finite")
    return frame
