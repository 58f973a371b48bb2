"""Fuzz target: frames uploaded over HTTP (`broker.ingest.uploads.parse_upload` and the
route).

Inputs: the real images of corpus/seeds/ (PNG, JPEG, WebP and BMP in the variants their
parsers branch on), mutated: bytes flipped, inserted, deleted, the file cut short, the
header of one spliced onto the body of another, and the declared dimensions rewritten
in each format's own header (with the PNG chunk CRC fixed, so the parser believes
them); sent as the body or as the one file of a ``multipart/form-data`` form, under the
right or a wrong ``Content-Type``.

Invariant: `parse_upload` returns an `Upload` of a known format and a positive size, or
raises `UploadError` (400, 413 or 415 with a code); nothing else, in bounded time. The
route (``POST /cameras/{id}/frames``) answers 201 with strict JSON, only for an image
within ``ingest.max_width`` x ``ingest.max_height``, or a JSON error; after an accepted
upload, the camera's "No Data" image (what viewers get once it goes offline) renders.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import pytest
from fuzzing import (
    SEEDS,
    bounded,
    budget,
    check_response,
    production_warnings,
    run_trio,
    strict_json,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import mutate_bytes

from broker import config as configuration
from broker.app import Broker
from broker.ingest.uploads import Upload, UploadError, parse_upload
from broker.protocol.wire import FORMATS, sniff_format

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "bmp": "image/bmp"}
SUFFIXES = {".png": "png", ".jpg": "jpeg", ".webp": "webp", ".bmp": "bmp"}
SEED_FILES = {p.name: p.read_bytes() for p in sorted(SEEDS.iterdir()) if p.suffix in SUFFIXES}
# Renders of "No Data" at the uploaded size only up to this many pixels: the fuzz must not
# itself allocate the gigabytes a hostile size asks for (the caps are checked above it).
RENDER_PIXELS = 1 << 22
INTERESTING_SIZES = [
    0,
    1,
    2,
    255,
    8192,
    8193,
    16383,
    16384,
    16385,
    30000,
    65535,
    65536,
    70000,
    (1 << 24) - 1,
    (1 << 31) - 1,
    (1 << 32) - 1,
]
UPLOAD_CONFIG = (
    '[server]\nlisten = "127.0.0.1:0"\n[ingest]\nendpoints = []\n'
    '[control]\nendpoints = []\nstate_file = ""\n[[cameras]]\nid = "up"\n'
)


def seed_format(name: str) -> str:
    return SUFFIXES[Path(name).suffix]


# -- declared dimensions, per format ---------------------------------------------------


def with_size(fmt: str, data: bytes, width: int, height: int) -> bytes:
    """``data`` declaring ``width`` x ``height`` in its own header (as far as the header
    field holds them); unchanged where the structure is not found."""
    rewrite = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "webp": _webp_size}
    return rewrite[fmt](bytearray(data), width, height)


def _png_size(data: bytearray, width: int, height: int) -> bytes:
    if data[12:16] != b"IHDR" or len(data) < 33:
        return bytes(data)
    data[16:24] = (width % 2**32).to_bytes(4, "big") + (height % 2**32).to_bytes(4, "big")
    data[29:33] = zlib.crc32(data[12:29]).to_bytes(4, "big")  # a CRC Pillow accepts
    return bytes(data)


def _jpeg_size(data: bytearray, width: int, height: int) -> bytes:
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            data[at + 5 : at + 9] = (height % 2**16).to_bytes(2, "big") + (width % 2**16).to_bytes(
                2, "big"
            )
            break
        at += 2 + length
    return bytes(data)


def _bmp_size(data: bytearray, width: int, height: int) -> bytes:
    if len(data) >= 26:
        data[18:26] = (width % 2**32).to_bytes(4, "little") + (height % 2**32).to_bytes(4, "little")
    return bytes(data)


def _webp_size(data: bytearray, width: int, height: int) -> bytes:
    """Every size field of the RIFF chunks: the VP8X canvas and the VP8 / VP8L frame."""
    w, h = max(width - 1, 0), max(height - 1, 0)
    at = 12
    while at + 8 <= len(data):
        chunk, size = bytes(data[at : at + 4]), int.from_bytes(data[at + 4 : at + 8], "little")
        body = at + 8
        if chunk == b"VP8X" and len(data) >= body + 10:  # canvas size minus one, 24 bits
            data[body + 4 : body + 10] = (w % 2**24).to_bytes(3, "little") + (h % 2**24).to_bytes(
                3, "little"
            )
        elif chunk == b"VP8L" and len(data) >= body + 5:  # 14 bits each after 0x2f
            bits = int.from_bytes(data[body + 1 : body + 5], "little")
            bits = (bits & ~0xFFFFFFF) | (w % 2**14) | (h % 2**14) << 14
            data[body + 1 : body + 5] = bits.to_bytes(4, "little")
        elif chunk == b"VP8 " and len(data) >= body + 10:  # 14 bits + 2 of scale, each
            data[body + 6 : body + 10] = (width % 2**16).to_bytes(2, "little") + (
                height % 2**16
            ).to_bytes(2, "little")
        at = body + size + (size & 1)
    return bytes(data)


# -- the inputs --------------------------------------------------------------------------

sizes = st.sampled_from(INTERESTING_SIZES) | st.integers(0, 2**32 - 1)


@st.composite
def mutated_images(draw: st.DrawFn) -> tuple[str, bytes]:
    """(format, data): a seed with one to four mutations."""
    name = draw(st.sampled_from(sorted(SEED_FILES)))
    fmt, data = seed_format(name), SEED_FILES[name]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["bytes", "bytes", "size", "size", "cut", "splice"]))
        if kind == "bytes":
            keep = 12 if draw(st.integers(0, 4)) else 0  # mostly past the magic bytes
            data = data[:keep] + mutate_bytes(draw, data[keep:], most=4)
        elif kind == "size":
            data = with_size(fmt, data, draw(sizes), draw(sizes))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            other = SEED_FILES[draw(st.sampled_from(sorted(SEED_FILES)))]
            data = (
                data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]
            )
    return fmt, data


@st.composite
def content_types(draw: st.DrawFn, fmt: str) -> str:
    right = MEDIA_TYPES[fmt]
    return draw(
        st.sampled_from(
            [
                right,
                right,
                right,
                right.upper(),
                right + "; q=1",
                "image/jpg",
                "image/gif",
                "application/octet-stream",
                "",
                "image/",
                "multipart/form-data",
            ]
        )
        | st.sampled_from(list(MEDIA_TYPES.values()))
        | st.text(max_size=30)
    )


@st.composite
def multipart(draw: st.DrawFn, fmt: str, data: bytes) -> tuple[str, bytes]:
    """A form carrying ``data`` as its file, the form itself sometimes malformed."""
    boundary = draw(
        st.sampled_from(["fuzzBoundary", "----x", "a" * 70, "", '"q"'])
        | st.text(st.characters(codec="ascii"), min_size=1, max_size=12)
    )
    part_type = draw(content_types(fmt))
    disposition = draw(
        st.sampled_from(
            [
                'form-data; name="frame"; filename="f.img"',
                'form-data; name="frame"',
                'form-data; filename=""',
                "",
                "attachment; filename=x",
            ]
        )
    )
    parts = [
        f"Content-Disposition: {disposition}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data
    ]
    if draw(st.integers(0, 3)) == 0:
        parts.append(b'Content-Disposition: form-data; name="note"\r\n\r\nhello')
    if draw(st.integers(0, 5)) == 0:
        parts.append(parts[0])  # two files
    delimiter = b"--" + boundary.encode("utf-8", "replace")
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    if draw(st.integers(0, 3)) == 0:
        body = mutate_bytes(draw, body)
    header_boundary = draw(st.just(boundary) | st.sampled_from(["", "other"]))
    return f"multipart/form-data; boundary={header_boundary}", body


@st.composite
def uploads(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt, data = draw(mutated_images())
    if draw(st.integers(0, 4)) == 0:
        return draw(multipart(fmt, data))
    return draw(content_types(fmt)), data


# -- the invariants ----------------------------------------------------------------------


def check_parse(content_type: str, body: bytes) -> Upload | None:
    with bounded("parse_upload"), production_warnings():
        try:
            upload = parse_upload(content_type, body)
        except UploadError as refused:
            assert refused.status in (400, 413, 415) and refused.code and str(refused)
            return None
    assert upload.format in FORMATS and sniff_format(upload.data) == upload.format
    assert type(upload.width) is int and type(upload.height) is int
    assert upload.width >= 1 and upload.height >= 1, (upload.width, upload.height)
    return upload


def check_upload(content_type: str, body: bytes) -> None:
    """Both levels of the invariant: the parser, then the route and "No Data" after it."""
    check_parse(content_type, body)
    broker = Broker(configuration.parse(UPLOAD_CONFIG))
    limits = broker.config.ingest
    with production_warnings():
        response = run_trio(
            lambda: broker.server.handlers.upload("up", content_type, body),
            "POST /cameras/up/frames",
        )
    check_response(response, "POST /cameras/up/frames")
    if response.status != 201:
        assert 400 <= response.status < 500, response.status
        return
    answer = strict_json(response.body, "the 201 body")
    width, height = answer["width"], answer["height"]
    assert 1 <= width <= limits.max_width and 1 <= height <= limits.max_height, (
        f"accepted an upload of {width}x{height}, beyond the {limits.max_width}x"
        f"{limits.max_height} cap"
    )
    if width * height > RENDER_PIXELS:
        return

    async def offline_snapshot() -> None:
        broker.hub.mark_offline(time.monotonic() + 3600)
        snapshot = await broker.server.handlers.snapshot("up")
        check_response(snapshot, "the No Data snapshot")
        assert snapshot.status == 200 and sniff_format(snapshot.body) == "jpeg"

    run_trio(offline_snapshot, "the No Data image")


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_FILES))
def test_every_seed_is_accepted(name: str) -> None:
    fmt, data = seed_format(name), SEED_FILES[name]
    upload = check_parse(MEDIA_TYPES[fmt], data)
    assert upload is not None and upload.format == fmt and (upload.width, upload.height) == (24, 16)
    check_upload(MEDIA_TYPES[fmt], data)


@budget(3000, each=0.01)
@given(uploads())
def test_mutated_uploads_are_accepted_or_refused_cleanly(upload: tuple[str, bytes]) -> None:
    check_upload(*upload)


def test_size_rewriting_reaches_every_format() -> None:
    """The "size" mutation really changes what the parser reads (else it fuzzes nothing).
    A BMP's size must agree with its length (`broker.protocol.layout`), so there the
    rewritten size is refused by name."""
    for name, data in SEED_FILES.items():
        fmt = seed_format(name)
        resized = with_size(fmt, data, 300, 200)
        with production_warnings():
            if fmt == "bmp":
                with pytest.raises(UploadError, match="300x200"):
                    parse_upload(MEDIA_TYPES[fmt], resized)
                continue
            upload = parse_upload(MEDIA_TYPES[fmt], resized)
        assert (upload.width, upload.height) == (300, 200), name


def test_multipart_wrapping_is_accepted_when_well_formed() -> None:
    data = SEED_FILES["rgb.png"]
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n"
    )
    upload = check_parse("multipart/form-data; boundary=b", body)
    assert upload is not None and upload.data == data
    handlers = Broker(configuration.parse(UPLOAD_CONFIG)).server.handlers
    response = run_trio(
        lambda: handlers.upload("up", "multipart/form-data; boundary=b", body), "a form upload"
    )
    assert json.loads(response.body)["format"] == "png"
