"""The benchmark client's stream parsers (benchmarks/client.py), without sockets: WebSocket
frames and MJPEG parts, cut at every possible place, give back each stamped frame once."""

from __future__ import annotations

import random
import socket
import struct
from typing import cast

import pytest

from benchmarks.client import Connection, MjpegConnection, part_length
from broker.protocol import stamp

# These tests feed bytes to the parser alone: no socket is ever read.
NO_SOCKET = cast(socket.socket, None)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(3000)


def frames(count: int) -> list[bytes]:
    """Stamped JPEG-like payloads of several sizes (the 2- and 4-byte length forms)."""
    return [
        stamp.stamp(
            JPEG[: 20 + seq * 9] + bytes(seq * 97 + (seq == 11) * 70_000), seq, 1000.0 + seq
        )
        for seq in range(count)
    ]


def websocket(payload: bytes) -> bytes:  # as the broker writes it: unmasked binary frame
    if len(payload) < 126:
        return bytes((0x82, len(payload))) + payload
    if len(payload) < 1 << 16:
        return struct.pack(">BBH", 0x82, 126, len(payload)) + payload
    return struct.pack(">BBQ", 0x82, 127, len(payload)) + payload


def mjpeg(payload: bytes) -> bytes:  # as the broker writes each part
    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload + b"\r\n"


def feed_in_pieces(conn: Connection, stream: bytes, seed: int) -> None:
    rng, pos = random.Random(seed), 0
    while pos < len(stream):
        size = rng.choice((1, 2, 3, 7, 64, 255, 256, 257, 1000, 5000))
        conn.feed(memoryview(stream[pos : pos + size]), 2000.0)
        pos += size


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["websocket", "mjpeg"])
def test_every_frame_is_counted_once_wherever_the_reads_split(kind: str, seed: int) -> None:
    sent = frames(12)
    if kind == "websocket":
        conn, stream = Connection(NO_SOCKET, "cam", "c"), b"".join(map(websocket, sent))
    else:
        conn, stream = MjpegConnection(NO_SOCKET, "cam", "c"), b"".join(map(mjpeg, sent))
    conn.reset_window(1999.0)
    feed_in_pieces(conn, stream, seed)
    summary = conn.summary(10.0)
    assert summary["frames"] == 12 and summary["drops"] == 0 and summary["seq_span"] == 12
    assert summary["bytes"] == sum(map(len, sent))
    assert summary["latencies_ms"] == [round((2000.0 - (1000.0 + s)) * 1000, 3) for s in range(12)]


def test_a_gap_in_sequence_numbers_counts_as_drops() -> None:
    sent = frames(6)
    conn = Connection(NO_SOCKET, "cam", "c")
    conn.reset_window(0.0)
    conn.feed(memoryview(b"".join(map(websocket, sent[:2] + sent[4:]))), 2000.0)
    summary = conn.summary(1.0)
    assert summary["frames"] == 4 and summary["drops"] == 2 and summary["seq_span"] == 6


def test_part_length_reads_the_header_case_insensitively() -> None:
    assert part_length(b"\r\n--b\r\ncontent-type: image/jpeg\r\nCONTENT-LENGTH: 42") == 42
    with pytest.raises(ValueError):
        part_length(b"--b\r\nContent-Type: image/jpeg")
