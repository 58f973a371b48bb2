"""The JPEG COM-segment latency stamp (cameras/stamp.py) on real encoder output."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import stamp

WIDTH, HEIGHT = 48, 32


@cache
def jpeg() -> bytes:
    """A small real JPEG from OpenCV (JFIF: SOI, then APP0)."""
    image = np.random.default_rng(3).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


@cache
def jpeg_without_app0() -> bytes:
    """The same JPEG with its APP0 segment cut out: SOI is followed by another marker."""
    data = jpeg()
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    return data[:2] + data[4 + length :]


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "OpenCV could not decode the JPEG"
    return image


def test_stamp_and_read() -> None:
    stamped = stamp.stamp(jpeg(), 42, 1_763_700_000.123456)
    assert stamp.read(stamped) == (42, 1_763_700_000.123456)
    assert len(stamped) == len(jpeg()) + stamp.SEGMENT_LEN
    assert stamp.read(memoryview(stamped)) == (42, 1_763_700_000.123456)
    assert stamp.read(bytearray(stamped)) == (42, 1_763_700_000.123456)


def test_stamp_goes_right_after_app0() -> None:
    data = jpeg()
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    stamped = stamp.stamp(data, 1, 2.0)
    assert stamped[:app0_end] == data[:app0_end]
    assert stamped[app0_end : app0_end + 2] == b"\xff\xfe"
    assert stamp.find(stamped) == app0_end + 4
    assert stamped[app0_end + 4 :].startswith(b"CB1 seq=00000000000000000001 t=")
    assert stamped[app0_end + stamp.SEGMENT_LEN :] == data[app0_end:]


def test_stamped_jpeg_decodes_to_the_same_image() -> None:
    original = decode(jpeg())
    stamped = decode(stamp.stamp(jpeg(), 7, 123.5))
    assert stamped.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(stamped, original)


def test_restamp_in_place() -> None:
    buffer = bytearray(stamp.stamp(jpeg(), 1, 10.0))
    length = len(buffer)
    stamp.restamp(buffer, 99, 20.25)
    assert len(buffer) == length
    assert stamp.read(buffer) == (99, 20.25)
    at = stamp.find(buffer)
    stamp.restamp(buffer, 100, 30.5, at=at)
    assert len(buffer) == length
    assert stamp.read(buffer) == (100, 30.5)
    assert decode(bytes(buffer)).shape == (HEIGHT, WIDTH, 3)


def test_restamp_without_a_stamp_raises() -> None:
    with pytest.raises(ValueError, match="no stamp"):
        stamp.restamp(bytearray(jpeg()), 1, 1.0)


def test_stamp_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        stamp.stamp(jpeg(), 10**20, 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        stamp.stamp(jpeg(), 1, 1e15)


def test_stamp_rejects_non_jpeg() -> None:
    with pytest.raises(ValueError, match="not a JPEG"):
        stamp.stamp(b"\x89PNG\r\n\x1a\n" + bytes(16), 1, 1.0)


def test_read_unstamped_jpeg_is_none() -> None:
    assert stamp.find(jpeg()) == -1
    assert stamp.read(jpeg()) is None
    assert stamp.read(jpeg_without_app0()) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n" + bytes(32),
        b"BM" + bytes(64),
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",
        bytes(range(256)),
    ],
    ids=["empty", "soi", "soi-ff", "png", "bmp", "webp", "junk"],
)
def test_read_non_jpeg_is_none(data: bytes) -> None:
    assert stamp.read(data) is None


def test_read_comment_that_is_not_ours_is_none() -> None:
    data = jpeg()
    comment = b"made by a camera"
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    assert stamp.read(data[:2] + segment + data[2:]) is None


def test_jpeg_without_app0() -> None:
    data = jpeg_without_app0()
    assert data[2:4] != b"\xff\xe0"
    assert decode(data).shape == (HEIGHT, WIDTH, 3)
    stamped = stamp.stamp(data, 5, 6.5)
    assert stamped[2:4] == b"\xff\xfe"
    assert stamp.find(stamped) == 6
    assert stamp.read(stamped) == (5, 6.5)
    assert np.array_equal(decode(stamped), decode(data))
    buffer = bytearray(stamped)
    stamp.restamp(buffer, 6, 7.5)
    assert stamp.read(buffer) == (6, 7.5)


times = st.integers(0, 10**16).map(lambda micros: micros / 10**6)


@settings(deadline=None)
@given(seq=st.integers(0, 10**19), t=times, seq2=st.integers(0, 10**19), t2=times)
def test_stamp_round_trip(seq: int, t: float, seq2: int, t2: float) -> None:
    stamped = stamp.stamp(jpeg(), seq, t)
    read = stamp.read(stamped)
    assert read is not None
    read_seq, read_t = read
    assert read_seq == seq
    assert abs(read_t - t) <= 1e-6
    buffer = bytearray(stamped)
    stamp.restamp(buffer, seq2, t2)
    assert len(buffer) == len(stamped)
    read = stamp.read(buffer)
    assert read is not None
    read_seq, read_t = read
    assert read_seq == seq2
    assert abs(read_t - t2) <= 1e-6
