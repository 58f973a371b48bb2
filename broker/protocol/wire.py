"""The worker → broker frame protocol (see docs/protocol.md).

A frame is one multipart ZeroMQ message of three parts:

1. topic: the camera id followed by ``TOPIC_END``. SUB subscriptions match byte
   prefixes, so without the delimiter a subscription to ``cam1`` would also match
   ``cam10``.
2. header: a msgpack map with ``version``, ``camera``, ``seq``, ``captured_at``
   (Unix seconds, float), ``width``, ``height`` and ``format``.
3. payload: the encoded image, exactly as a viewer receives it.

Pure and synchronous: no ZeroMQ or trio import, so both sides and the tests use it
without sockets. Decoding never trusts its input and raises `WireError` naming what
is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgpack

from broker.protocol import layout

PROTOCOL_VERSION = 1
TOPIC_END = b"\x00"
FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "lz4")
# Formats whose size grows with the pixel count (uncompressed, or compressed fast and
# losslessly): their frame-size limit follows the frame's size (`frame_limit`).
RAW_FORMATS = frozenset(("bmp", "tiff", "lz4"))
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")  # little- and big-endian
LZ4_MAGIC = b"\x04\x22\x4d\x18"  # an LZ4 frame (not the legacy or a block format)
MAX_DIMENSION = 16384
CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The header is a handful of small fields; anything bigger is not ours.
MAX_HEADER_BYTES = 1024

Buffer = bytes | bytearray | memoryview


class WireError(ValueError):
    """A message that does not follow the protocol.

    ``reason`` is a short stable code for counting (``parts``, ``topic``, ``header``,
    ``version``, ``field``, ``dimensions``, ``oversize``, ``not_image``, ``layout``); the
    message says what is wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FrameHeader:
    camera: str
    seq: int
    captured_at: float
    width: int
    height: int
    format: str = "jpeg"


def topic(camera: str) -> bytes:
    """The topic (and subscription prefix) for one camera."""
    return camera.encode() + TOPIC_END


def encode(header: FrameHeader, payload: Buffer) -> list[Buffer]:
    """The parts of one frame message, ready for ``send_multipart``."""
    fields = {
        "version": PROTOCOL_VERSION,
        "camera": header.camera,
        "seq": header.seq,
        "captured_at": header.captured_at,
        "width": header.width,
        "height": header.height,
        "format": header.format,
    }
    return [topic(header.camera), msgpack.packb(fields), payload]


def decode(
    parts: Sequence[Buffer],
    max_payload: int,
    max_width: int = MAX_DIMENSION,
    max_height: int = MAX_DIMENSION,
) -> tuple[FrameHeader, Buffer]:
    """Check and split one received message; the payload is returned uncopied.

    ``max_payload`` is the receiver's ``ingest.max_frame_bytes``; a raw format may reach
    its own size beyond it (`frame_limit`). The image's own header must agree with the
    frame header and the payload's length (`broker.protocol.layout`): ``layout``.

    ``max_width`` and ``max_height`` are the receiver's caps (``ingest.max_width`` and
    ``max_height``): a header declaring more is refused (``dimensions``) whatever the
    payload, since a declared size is what later code trusts (the "No Data" image)."""
    if len(parts) != 3:
        raise WireError(
            "parts", f"expected 3 message parts (topic, header, payload), got {len(parts)}"
        )
    raw_topic, raw_header, payload = parts
    if len(raw_header) > MAX_HEADER_BYTES:
        raise WireError("header", f"header of {len(raw_header)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        fields = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError("header", f"header is not valid msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise WireError("header", f"header must be a msgpack map, got {type(fields).__name__}")
    version = fields.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WireError(
            "version", f"unsupported protocol version {version!r}, expected {PROTOCOL_VERSION}"
        )
    header = FrameHeader(
        camera=_field(fields, "camera", str),
        seq=_field(fields, "seq", int),
        captured_at=_field(fields, "captured_at", float),
        width=_field(fields, "width", int),
        height=_field(fields, "height", int),
        format=_field(fields, "format", str),
    )
    unknown = sorted(set(fields) - _HEADER_KEYS, key=repr)
    if unknown:
        raise WireError("field", f"unknown header field(s): {', '.join(map(str, unknown))}")
    _check(header)
    _check_caps(header, max_width, max_height)
    if bytes(raw_topic) != topic(header.camera):
        raise WireError(
            "topic", f"topic {bytes(raw_topic)!r} does not match camera {header.camera!r}"
        )
    limit = frame_limit(header.format, header.width, header.height, max_payload)
    if len(payload) > limit:
        raise WireError("oversize", f"payload of {len(payload)} bytes exceeds the limit of {limit}")
    found = sniff_format(payload)
    if found != header.format:
        head = bytes(payload[:8]).hex(" ")
        raise WireError(
            "not_image",
            f"payload is not a {header.format} image (found {found or 'unknown data'}: {head})",
        )
    try:
        layout.check(header.format, payload, header.width, header.height)
    except layout.LayoutError as error:
        raise WireError("layout", f"a {header.format} frame: {error}") from None
    return header, payload


def raw_bytes(width: int, height: int) -> int:
    """The pixels of a ``width`` x ``height`` frame at 24 bits: the most any raw format
    holds (16-bit grey TIFF: two thirds of it)."""
    return width * height * 3


# A raw frame's header, a BMP's row padding, LZ4's block headers and worst-case
# expansion (1/255), a TIFF's tags: all within this beside its pixels.
RAW_SLACK = 64 * 1024


def frame_limit(format: str, width: int, height: int, max_frame_bytes: int) -> int:
    """The largest payload accepted for one frame: ``max_frame_bytes`` (the config's
    ``ingest.max_frame_bytes``), or for a raw format (`RAW_FORMATS`) its pixels plus
    slack when that is more (a 4K BGR frame is 24.9 MB)."""
    if format not in RAW_FORMATS:
        return max_frame_bytes
    pixels = raw_bytes(width, height)
    return max(max_frame_bytes, pixels + pixels // 255 + RAW_SLACK)


_HEADER_KEYS = {"version", "camera", "seq", "captured_at", "width", "height", "format"}


_T = TypeVar("_T")


def _field(fields: dict, name: str, kind: type[_T]) -> _T:
    if name not in fields:
        raise WireError("field", f"header field {name!r} is missing")
    value = fields[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError(
            "field", f"header field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _check(header: FrameHeader) -> None:
    if not CAMERA_ID.fullmatch(header.camera):
        raise WireError("field", f"camera id {header.camera!r} is not valid ({CAMERA_ID.pattern})")
    if header.seq < 0:
        raise WireError("field", f"seq must be >= 0, got {header.seq}")
    if not math.isfinite(header.captured_at) or header.captured_at < 0:
        raise WireError(
            "field", f"captured_at must be a finite time >= 0, got {header.captured_at}"
        )
    for name in ("width", "height"):
        value = getattr(header, name)
        if not 1 <= value <= MAX_DIMENSION:
            raise WireError("field", f"{name} must be from 1 to {MAX_DIMENSION}, got {value}")
    if header.format not in FORMATS:
        raise WireError(
            "field", f"format must be one of {', '.join(FORMATS)}, got {header.format!r}"
        )


def _check_caps(header: FrameHeader, max_width: int, max_height: int) -> None:
    if header.width > max_width or header.height > max_height:
        raise WireError(
            "dimensions",
            f"a {header.width}x{header.height} frame exceeds the limit of {max_width}x{max_height}",
        )


def sniff_format(data: Buffer) -> str | None:
    """The image format that ``data`` starts like, by its magic bytes, or None."""
    head = bytes(data[:12])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(data) > 26:
        return "bmp"
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head[:4] == LZ4_MAGIC:
        return "lz4"
    return None
