"""Fuzz target: the worker → broker frame codec (`broker.protocol.wire.decode`).

Invariant: any list of parts decodes to a header the broker can rely on (a valid camera
id, dimensions in range, a finite capture time, a payload of the declared format within
the limit) or raises `WireError` with a known reason; never anything else, in bounded
time. What the broker builds from an accepted frame (the per-camera WebSocket message,
the MJPEG part, the /ws frame with its JSON header) builds, and the /ws header is strict
JSON. Valid frames round-trip.
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct
from typing import Any

import lz4.frame
import msgpack
from fuzzing import SEEDS, bounded, budget, mux_frame
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from strategies import msgpack_values, mutate_bytes

from broker.core.frame import Frame
from broker.protocol import wire

MAX_PAYLOAD = 64 * 1024
REASONS = {"parts", "topic", "header", "version", "field", "oversize", "not_image"}
REASONS |= {"layout", "dimensions"}  # a header that disagrees with the image or the caps
SEED_SIZE = (24, 16)  # every seed image's


def _tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", SEED_SIZE, (40, 90, 200)).save(out, format="TIFF")
    return out.getvalue()


PAYLOADS = {
    "jpeg": (SEEDS / "baseline.jpg").read_bytes(),
    "png": (SEEDS / "rgb.png").read_bytes(),
    "webp": (SEEDS / "lossy.webp").read_bytes(),
    "bmp": (SEEDS / "mono1.bmp").read_bytes(),
    "tiff": _tiff(),
    "lz4": lz4.frame.compress(
        bytes(range(256)) * 4 + bytes(SEED_SIZE[0] * SEED_SIZE[1] * 3 - 1024)
    ),
}
# Their own headers state their size, which the frame header must then repeat.
SIZED = {"bmp", "tiff", "lz4"}


def fit(header: wire.FrameHeader) -> wire.FrameHeader:
    """A header that agrees with its format's seed payload."""
    if header.format not in SIZED:
        return header
    return dataclasses.replace(header, width=SEED_SIZE[0], height=SEED_SIZE[1])


camera_ids = st.from_regex(wire.CAMERA_ID, fullmatch=True)
headers = st.builds(
    wire.FrameHeader,
    camera=camera_ids,
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.floats(0, 1e12, allow_nan=False),
    width=st.integers(1, wire.MAX_DIMENSION),
    height=st.integers(1, wire.MAX_DIMENSION),
    format=st.sampled_from(wire.FORMATS),
).map(fit)


def check(parts: list[Any], max_payload: int = MAX_PAYLOAD) -> None:
    """The invariant of this target for one message."""
    with bounded("wire.decode"):
        try:
            header, payload = wire.decode(parts, max_payload)
        except wire.WireError as error:
            assert error.reason in REASONS, error.reason
            assert str(error)
            return
    assert wire.CAMERA_ID.fullmatch(header.camera)
    assert type(header.seq) is int and header.seq >= 0
    assert math.isfinite(header.captured_at) and header.captured_at >= 0
    assert 1 <= header.width <= wire.MAX_DIMENSION and 1 <= header.height <= wire.MAX_DIMENSION
    assert header.format in wire.FORMATS and wire.sniff_format(payload) == header.format
    assert len(payload) <= max_payload
    frame = Frame.received(
        header.camera,
        header.seq,
        header.captured_at,
        header.width,
        header.height,
        header.format,
        payload,
    )
    assert b"".join(frame.websocket_message()).endswith(bytes(payload))
    assert frame.mjpeg_part()
    message = b"".join(frame.mux_message())
    # The /ws message: a WebSocket header, then our uint16 + JSON header + image.
    skip = 2 + {126: 2, 127: 8}.get(message[1] & 0x7F, 0)
    fields, image = mux_frame(message[skip:])
    assert fields["camera"] == header.camera and image == bytes(payload)
    again, _ = wire.decode(wire.encode(header, payload), max_payload)
    assert again == header


def valid(header: wire.FrameHeader) -> list[bytes]:
    return [bytes(p) for p in wire.encode(header, PAYLOADS[header.format])]


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[Any]:
    """A valid frame message, then a few mutations: of the header's fields (any msgpack
    value, a field dropped or added), of its bytes, of the topic, of the parts."""
    header = draw(headers)
    topic, raw_header, payload = valid(header)
    fields = msgpack.unpackb(raw_header)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "drop", "add", "bytes", "topic", "payload", "parts"]))
        if kind == "field":
            fields[draw(st.sampled_from(sorted(fields)))] = draw(msgpack_values)
        elif kind == "drop" and fields:
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif kind == "add":
            fields[draw(st.text(max_size=8))] = draw(msgpack_values)
        raw_header = msgpack.packb(fields)
        if kind == "bytes":
            raw_header = mutate_bytes(draw, raw_header)
        elif kind == "topic":
            topic = draw(
                st.sampled_from(
                    [b"", topic[:-1], topic + b"x", b"\x00", header.camera.encode() + b"\x00\x00"]
                )
                | st.binary(max_size=70)
            )
        elif kind == "payload":
            payload = draw(st.sampled_from(list(PAYLOADS.values())))
            payload = mutate_bytes(draw, payload)
    parts: list[Any] = [topic, raw_header, payload]
    if draw(st.integers(0, 9)) == 0:
        parts = draw(st.sampled_from([parts[:2], [*parts, b""], parts[::-1], []]))
    if draw(st.booleans()):
        parts = [memoryview(p) for p in parts]  # as ingest passes zmq frame buffers
    return parts


@budget(600, each=0.003)
@given(headers)
def test_valid_frames_round_trip(header: wire.FrameHeader) -> None:
    decoded, payload = wire.decode(valid(header), MAX_PAYLOAD)
    assert decoded == header and payload == PAYLOADS[header.format]
    check(valid(header))


@budget(3000, each=0.003)
@given(mutated_messages())
def test_mutated_frames_decode_or_raise_wire_error(parts: list[Any]) -> None:
    check(parts)


@budget(1000, each=0.002)
@given(st.lists(st.binary(max_size=64), max_size=5), st.integers(0, 2 * MAX_PAYLOAD))
def test_garbage_decodes_or_raises_wire_error(parts: list[bytes], limit: int) -> None:
    check(parts, limit)


def test_a_header_declaring_huge_lengths_is_refused_cheaply() -> None:
    # msgpack str32 / map32 heads claiming 4 GiB: refused without allocating them.
    for head in (b"\xdb\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff"):
        check([b"cam\x00", head + struct.pack(">I", 0), PAYLOADS["jpeg"]])
