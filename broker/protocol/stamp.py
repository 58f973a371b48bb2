"""The latency stamp a test source writes into its JPEGs (see docs/protocol.md).

A JPEG ``COM`` (comment) segment right after the JFIF ``APP0`` segment (or right
after ``SOI`` when there is none), holding fixed-width ASCII::

    CB1 seq=00000000000000000042 t=00001763700000.123456

``seq`` is the frame's sequence number and ``t`` its capture time in Unix seconds.
Decoders and browsers ignore comments, so the stamp travels through every output
(WebSocket, MJPEG, snapshot) and any consumer can measure capture-to-receipt latency.
The fixed width lets a replaying source rewrite the stamp in place (`restamp`).
"""

from __future__ import annotations

import struct

PREFIX = b"CB1 seq="
_TEMPLATE = "CB1 seq={seq:020d} t={t:021.6f}"
STAMP_LEN = len(_TEMPLATE.format(seq=0, t=0.0))
SEGMENT_LEN = 4 + STAMP_LEN  # marker, length, text


def _text(seq: int, t: float) -> bytes:
    text = _TEMPLATE.format(seq=seq, t=t).encode()
    if len(text) != STAMP_LEN:
        raise ValueError(f"seq {seq} or time {t} does not fit the stamp")
    return text


def _insert_at(jpeg: bytes | bytearray | memoryview) -> int:
    if bytes(jpeg[:2]) != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    if bytes(jpeg[2:4]) == b"\xff\xe0":  # keep APP0 (JFIF) first, where readers expect it
        return 4 + int.from_bytes(jpeg[4:6], "big")
    return 2


def stamp(jpeg: bytes, seq: int, t: float) -> bytes:
    """A copy of ``jpeg`` with a stamp segment inserted."""
    at = _insert_at(jpeg)
    segment = b"\xff\xfe" + struct.pack(">H", STAMP_LEN + 2) + _text(seq, t)
    return b"".join((jpeg[:at], segment, memoryview(jpeg)[at:]))  # one copy of the image


def find(jpeg: bytes | bytearray | memoryview) -> int:
    """Offset of the stamp text in ``jpeg``, or -1. Only the first segments are read."""
    pos = 2
    end = min(len(jpeg), 4096)
    while pos + 4 <= end and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if marker == 0xFE and bytes(jpeg[pos + 4 : pos + 4 + len(PREFIX)]) == PREFIX:
            return pos + 4
        if marker == 0xDA:  # start of scan: no more headers
            break
        pos += 2 + length
    return -1


def read(jpeg: bytes | bytearray | memoryview) -> tuple[int, float] | None:
    """``(seq, capture time)`` from a stamped JPEG, or None when it carries no stamp."""
    at = find(jpeg)
    if at < 0:
        return None
    text = bytes(jpeg[at : at + STAMP_LEN])
    try:
        seq_part, t_part = text[len(PREFIX) :].split(b" t=")
        return int(seq_part), float(t_part)
    except ValueError:
        return None


def restamp(jpeg: bytearray, seq: int, t: float, at: int | None = None) -> None:
    """Rewrite the stamp of an already stamped JPEG in place (``at`` from `find`)."""
    if at is None:
        at = find(jpeg)
    if at < 0:
        raise ValueError("JPEG carries no stamp")
    jpeg[at : at + STAMP_LEN] = _text(seq, t)
