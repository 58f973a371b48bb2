"""The worker → broker frame codec (cameras/wire.py): round trips, hostile input, and
one exact ``reason`` per kind of malformed message."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from broker.protocol import wire
from broker.protocol.wire import FrameHeader, WireError

MAX_PAYLOAD = 1 << 20

# The shortest payload prefix that `sniff_format` recognises, per format.
MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "webp": b"RIFF\x10\x00\x00\x00WEBP",
    "bmp": b"BM" + bytes(26),
    "tiff": b"II*\x00",
    "lz4": b"\x04\x22\x4d\x18",
}
# Formats whose header the broker reads (`broker.protocol.layout`): a round trip needs a
# real image of the header's size, made by `raw_payload`.
COMPRESSED = tuple(f for f in wire.FORMATS if f not in wire.RAW_FORMATS)

VALID_FIELDS: dict[str, Any] = {
    "version": wire.PROTOCOL_VERSION,
    "camera": "cam1",
    "seq": 42,
    "captured_at": 1_763_700_000.125,
    "width": 640,
    "height": 480,
    "format": "jpeg",
}


def message(
    fields: Any = None,
    *,
    topic: bytes | None = None,
    payload: bytes = MAGIC["jpeg"] + b"rest",
    **changes: Any,
) -> list[bytes]:
    """Three raw parts from a header map (VALID_FIELDS with ``changes``; None deletes a key)."""
    if fields is None:
        fields = {**VALID_FIELDS, **changes}
        fields = {key: value for key, value in fields.items() if value is not None}
    if topic is None:
        camera = fields.get("camera") if isinstance(fields, dict) else None
        topic = wire.topic(camera) if isinstance(camera, str) else b"cam1\x00"
    return [topic, msgpack.packb(fields), payload]


def reject(parts: list[Any], max_payload: int = MAX_PAYLOAD) -> WireError:
    """The WireError that decoding ``parts`` raises."""
    with pytest.raises(WireError) as caught:
        wire.decode(parts, max_payload)
    return caught.value


# -- round trips ----------------------------------------------------------------------


headers = st.builds(
    FrameHeader,
    camera=st.from_regex(wire.CAMERA_ID, fullmatch=True),
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    width=st.integers(1, wire.MAX_DIMENSION),
    height=st.integers(1, wire.MAX_DIMENSION),
    format=st.sampled_from(COMPRESSED),
)
raw_headers = st.builds(
    FrameHeader,
    camera=st.just("cam1"),
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    format=st.sampled_from(sorted(wire.RAW_FORMATS)),
)


def raw_payload(header: FrameHeader, seed: int = 0) -> bytes:
    """A real image of ``header``'s format and size."""
    import io

    import lz4.frame
    from PIL import Image

    from broker.protocol import layout

    pixels = bytes((seed + i) % 256 for i in range(header.width * header.height * 3))
    if header.format == "lz4":
        return lz4.frame.compress(pixels, store_size=True)
    if header.format == "bmp":
        row = header.width * 3
        pad = bytes((4 - row % 4) % 4)
        rows = b"".join(pixels[y * row : (y + 1) * row] + pad for y in range(header.height))
        return layout.bmp_header(header.width, header.height) + rows
    out = io.BytesIO()
    Image.frombytes("RGB", (header.width, header.height), pixels).save(out, "TIFF")
    return out.getvalue()


@given(header=raw_headers, seed=st.integers(0, 255))
def test_round_trip_of_raw_formats(header: FrameHeader, seed: int) -> None:
    """BMP, TIFF and LZ4 frames whose own headers agree with the frame's come through."""
    payload = raw_payload(header, seed)
    decoded, out = wire.decode(wire.encode(header, payload), MAX_PAYLOAD)
    assert decoded == header
    assert out == payload


@pytest.mark.parametrize("fmt", sorted(wire.RAW_FORMATS))
def test_a_raw_frame_of_another_size_than_its_header_says_is_refused(fmt: str) -> None:
    header = FrameHeader("cam1", 1, 2.0, 8, 6, fmt)
    payload = raw_payload(FrameHeader("cam1", 1, 2.0, 5, 8, fmt))  # fewer pixels (LZ4)
    error = reject(wire.encode(header, payload))
    assert error.reason == "layout"


def test_raw_formats_may_exceed_max_frame_bytes_by_their_pixels() -> None:
    assert wire.frame_limit("jpeg", 3840, 2160, 16 << 20) == 16 << 20
    limit = wire.frame_limit("lz4", 3840, 2160, 16 << 20)
    assert 3840 * 2160 * 3 < limit < 3840 * 2160 * 3 * 1.01
    assert wire.frame_limit("bmp", 640, 480, 16 << 20) == 16 << 20


@given(header=headers, rest=st.binary(max_size=64))
def test_round_trip(header: FrameHeader, rest: bytes) -> None:
    """decode(encode(h, p)) gives back the same header and payload."""
    payload = MAGIC[header.format] + rest
    parts = wire.encode(header, payload)
    assert parts[0] == wire.topic(header.camera)
    decoded, out = wire.decode([bytes(part) for part in parts], MAX_PAYLOAD)
    assert decoded == header
    assert out == payload


@given(header=headers)
def test_round_trip_through_memoryviews(header: FrameHeader) -> None:
    """Parts as memoryviews (what the broker passes) decode the same."""
    payload = MAGIC[header.format] + b"\x00" * 16
    parts = [memoryview(bytes(part)) for part in wire.encode(header, payload)]
    decoded, out = wire.decode(parts, MAX_PAYLOAD)
    assert decoded == header
    assert bytes(out) == payload


def test_encode_passes_the_payload_object_through() -> None:
    payload = MAGIC["png"] + b"data"
    header = FrameHeader("a", 1, 2.0, 3, 4, "png")
    assert wire.encode(header, payload)[2] is payload


def test_integer_captured_at_is_accepted_as_float() -> None:
    header, _ = wire.decode(message(captured_at=1_763_700_000), MAX_PAYLOAD)
    assert header.captured_at == 1_763_700_000.0
    assert isinstance(header.captured_at, float)


def test_decode_returns_the_memoryview_payload_uncopied() -> None:
    backing = bytearray(MAGIC["jpeg"] + b"x" * 1000)
    view = memoryview(backing)
    parts = message()
    _, payload = wire.decode([memoryview(parts[0]), memoryview(parts[1]), view], MAX_PAYLOAD)
    assert payload is view
    assert payload.obj is backing


def test_decode_accepts_zmq_frame_buffers() -> None:
    """The broker decodes `zmq.Frame.buffer` memoryviews without copying the payload."""
    frames = [zmq.Frame(part) for part in message(payload=MAGIC["webp"] + b"abc", format="webp")]
    buffers = [frame.buffer for frame in frames]
    header, payload = wire.decode(buffers, MAX_PAYLOAD)
    assert header.format == "webp"
    assert payload is buffers[2]
    assert bytes(payload) == MAGIC["webp"] + b"abc"


def test_payload_at_exactly_the_limit_is_accepted() -> None:
    parts = message()
    _, payload = wire.decode(parts, len(parts[2]))
    assert payload is parts[2]


# -- hostile input --------------------------------------------------------------------


@given(parts=st.lists(st.binary(max_size=64), max_size=5))
def test_garbage_raises_only_wire_error(parts: list[bytes]) -> None:
    try:
        wire.decode(parts, 1000)
    except WireError as exc:
        assert exc.reason in {
            "parts",
            "topic",
            "header",
            "version",
            "field",
            "oversize",
            "not_image",
        }


header_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2),
)


@given(
    changes=st.dictionaries(st.sampled_from(sorted(VALID_FIELDS)), header_values, max_size=3),
    extra=st.dictionaries(
        st.one_of(st.text(max_size=6), st.binary(max_size=6)), header_values, max_size=3
    ),
)
def test_hostile_header_maps_raise_only_wire_error(
    changes: dict[str, Any], extra: dict[str | bytes, Any]
) -> None:
    """Near-valid header maps, with wrong values and extra str or bytes keys."""
    fields: dict[Any, Any] = {**VALID_FIELDS, **changes, **extra}  # str and bytes keys
    parts = [b"cam1\x00", msgpack.packb(fields), MAGIC["jpeg"]]
    with contextlib.suppress(WireError):
        wire.decode(parts, 1000)


def bad_header_cases() -> list[Any]:
    cases = [
        ("two parts", message()[:2], "parts", "got 2"),
        ("four parts", [*message(), b""], "parts", "got 4"),
        ("no parts", [], "parts", "got 0"),
        ("not msgpack", [b"cam1\x00", b"\xc1", MAGIC["jpeg"]], "header", "not valid msgpack"),
        (
            "truncated msgpack",
            [b"cam1\x00", message()[1][:-3], MAGIC["jpeg"]],
            "header",
            "not valid msgpack",
        ),
        (
            "trailing bytes",
            [b"cam1\x00", message()[1] + b"\x00", MAGIC["jpeg"]],
            "header",
            "not valid msgpack",
        ),
        ("header too big", message(camera="cam1", pad="x" * 1100), "header", "exceeds 1024"),
        ("header a list", message([1, 2, 3]), "header", "must be a msgpack map, got list"),
        ("header an int", message(7), "header", "must be a msgpack map, got int"),
        ("int map keys", message({1: 2}), "header", "not valid msgpack"),
        ("version 2", message(version=2), "version", "unsupported protocol version 2"),
        ("version missing", message(version=None), "version", "unsupported protocol version None"),
        ("version string", message(version="1"), "version", "unsupported protocol version '1'"),
        ("seq missing", message(seq=None), "field", "'seq' is missing"),
        ("camera missing", message(camera=None, topic=b"cam1\x00"), "field", "'camera' is missing"),
        ("format missing", message(format=None), "field", "'format' is missing"),
        ("seq bool", message(seq=True), "field", "'seq' must be int, got bool"),
        ("width bool", message(width=False), "field", "'width' must be int, got bool"),
        ("seq float", message(seq=1.0), "field", "'seq' must be int, got float"),
        (
            "captured_at bool",
            message(captured_at=True),
            "field",
            "'captured_at' must be float, got bool",
        ),
        (
            "captured_at str",
            message(captured_at="now"),
            "field",
            "'captured_at' must be float, got str",
        ),
        (
            "camera bytes",
            message(camera=b"cam1", topic=b"cam1\x00"),
            "field",
            "'camera' must be str, got bytes",
        ),
        ("format a list", message(format=[]), "field", "'format' must be str, got list"),
        ("negative seq", message(seq=-1), "field", "seq must be >= 0, got -1"),
        (
            "nan captured_at",
            message(captured_at=math.nan),
            "field",
            "captured_at must be a finite time",
        ),
        (
            "inf captured_at",
            message(captured_at=math.inf),
            "field",
            "captured_at must be a finite time",
        ),
        (
            "negative captured_at",
            message(captured_at=-1.0),
            "field",
            "captured_at must be a finite time >= 0, got -1.0",
        ),
        ("width 0", message(width=0), "field", "width must be from 1 to 16384, got 0"),
        ("height 0", message(height=0), "field", "height must be from 1 to 16384, got 0"),
        (
            "width too big",
            message(width=16385),
            "field",
            "width must be from 1 to 16384, got 16385",
        ),
        ("negative height", message(height=-5), "field", "height must be from 1 to 16384, got -5"),
        (
            "unknown format",
            message(format="gif"),
            "field",
            "format must be one of jpeg, png, webp, bmp, tiff, lz4, got 'gif'",
        ),
        ("upper-case format", message(format="JPEG"), "field", "got 'JPEG'"),
        ("bad camera id", message(camera="bad id"), "field", "camera id 'bad id' is not valid"),
        ("empty camera id", message(camera=""), "field", "camera id '' is not valid"),
        ("camera id too long", message(camera="c" * 65), "field", "is not valid"),
        ("camera id leading dash", message(camera="-cam"), "field", "is not valid"),
        (
            "topic of cam10 for cam1",
            message(camera="cam1", topic=b"cam10\x00"),
            "topic",
            "topic b'cam10\\x00' does not match camera 'cam1'",
        ),
        (
            "topic of cam1 for cam10",
            message(camera="cam10", topic=b"cam1\x00"),
            "topic",
            "does not match camera 'cam10'",
        ),
        (
            "topic without delimiter",
            message(camera="cam1", topic=b"cam1"),
            "topic",
            "does not match camera 'cam1'",
        ),
        ("empty topic", message(topic=b""), "topic", "does not match"),
        (
            "oversize payload",
            (message(), 6),
            "oversize",
            "payload of 7 bytes exceeds the limit of 6",
        ),
        (
            "jpeg declared, png sent",
            message(payload=MAGIC["png"]),
            "not_image",
            "not a jpeg image (found png: 89 50 4e 47",
        ),
        (
            "png declared, jpeg sent",
            message(format="png"),
            "not_image",
            "not a png image (found jpeg: ff d8 ff",
        ),
        (
            "junk payload",
            message(payload=b"hello world"),
            "not_image",
            "found unknown data: 68 65 6c 6c 6f 20 77 6f)",
        ),
        ("empty payload", message(payload=b""), "not_image", "found unknown data"),
        (
            "short bmp",
            message(format="bmp", payload=b"BM" + bytes(24)),
            "not_image",
            "not a bmp image",
        ),
        ("unknown field", message(extra=1), "field", "unknown header field(s): extra"),
        ("unknown fields", message(zz=1, aa=2), "field", "unknown header field(s): aa, zz"),
        (
            "unknown bytes field",
            message({**VALID_FIELDS, b"raw": 1}),
            "field",
            "unknown header field(s): b'raw'",
        ),
        # Hostile but legal msgpack: extra keys of both str and bytes type (bug: TypeError).
        (
            "unknown str and bytes fields",
            message({**VALID_FIELDS, b"raw": 1, "text": 2}),
            "field",
            "unknown header field(s)",
        ),
    ]
    return [pytest.param(parts, reason, text, id=name) for name, parts, reason, text in cases]


@pytest.mark.parametrize(("parts", "reason", "text"), bad_header_cases())
def test_malformed_message(parts: Any, reason: str, text: str) -> None:
    parts, max_payload = parts if isinstance(parts, tuple) else (parts, MAX_PAYLOAD)
    error = reject(parts, max_payload)
    assert error.reason == reason
    assert text in str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("version", [True, 1.0], ids=["bool", "float"])
def test_version_must_be_the_integer_1(version: object) -> None:
    """Like every int field, ``version`` rejects bool and float look-alikes of 1."""
    error = reject(message(version=version))
    assert error.reason == "version"


def test_rejects_memoryview_topic_mismatch() -> None:
    parts = [memoryview(part) for part in message(camera="cam1", topic=b"cam10\x00")]
    assert reject(parts).reason == "topic"


def test_topic_is_not_a_prefix_of_a_longer_id() -> None:
    assert wire.topic("cam1") == b"cam1\x00"
    assert not wire.topic("cam10").startswith(wire.topic("cam1"))


# -- sniff_format ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", wire.FORMATS)
def test_sniff_format(fmt: str) -> None:
    assert wire.sniff_format(MAGIC[fmt]) == fmt
    assert wire.sniff_format(MAGIC[fmt] + b"more") == fmt
    assert wire.sniff_format(memoryview(MAGIC[fmt] + b"more")) == fmt
    assert wire.sniff_format(bytearray(MAGIC[fmt])) == fmt


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\xff\xd8",
        b"\xff\xd8\x00",
        b"\x89PNG\r\n\x1a",
        b"GIF89a\x01\x00\x01\x00",
        b"RIFF\x10\x00\x00\x00WAVE",
        b"RIFF",
        b"BM" + bytes(24),
        b"bm" + bytes(30),
        b"hello world, not an image",
    ],
)
def test_sniff_format_junk(data: bytes) -> None:
    assert wire.sniff_format(data) is None


@given(
    fmt=st.sampled_from(sorted(wire.RAW_FORMATS)),
    data=st.binary(max_size=300),
    prefix=st.sampled_from([b"", b"BM", b"II*\x00", b"MM\x00*", b"\x04\x22\x4d\x18"]),
)
def test_layout_check_raises_only_layout_errors(fmt: str, data: bytes, prefix: bytes) -> None:
    """Whatever a raw frame holds, reading its header raises nothing but LayoutError."""
    from broker.protocol import layout

    with contextlib.suppress(layout.LayoutError):
        layout.check(fmt, prefix + data, 4, 4)


def test_a_raw_frame_over_its_own_limit_is_oversize() -> None:
    """The limit of a raw format follows the frame's size: a 64x48 LZ4 frame may not
    carry 1 MB, though max_frame_bytes would let a JPEG of that size through."""
    header = FrameHeader("cam1", 1, 2.0, 64, 48, "lz4")
    limit = wire.frame_limit("lz4", 64, 48, 1000)
    assert limit == 64 * 48 * 3 + 64 * 48 * 3 // 255 + wire.RAW_SLACK
    error = reject(wire.encode(header, MAGIC["lz4"] + bytes(limit)), max_payload=1000)
    assert error.reason == "oversize" and str(limit) in str(error)
