"""The layout the raw formats declare in their own headers (BMP, TIFF, LZ4 frame), read
without decoding anything, so a frame can be judged before a byte of it is decompressed.

`check` says whether an image's header agrees with the size the frame claims and with
its own length: a BMP whose header promises more rows than it carries, a TIFF whose
strips run past its end or whose tags declare 100000x100000, an LZ4 frame whose content
size is not width x height x 3. Each is a `LayoutError` naming what disagrees. Reading
is bounded: a TIFF's first directory only, at most `MAX_TIFF_TAGS` tags and
`MAX_TIFF_STRIPS` strips; nothing is allocated in proportion to what a header claims.

`bmp_header` builds the 54-byte header of a 24-bit top-down BMP exactly as the user's
Grafana panel does for its ``image/lz4`` mode (docs/protocol.md, "Formats").

Pure and synchronous.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview

BMP_HEADER_BYTES = 54  # file header (14) + BITMAPINFOHEADER (40)
MAX_TIFF_TAGS = 4096  # tags in one TIFF directory: libtiff writes about 15
MAX_TIFF_STRIPS = 1 << 16  # strips (or tiles) of one TIFF image: libtiff writes a row each at 4K
BMP_TRAILING = 64 * 1024  # bytes a BMP may carry after its pixels (a colour profile)
# LZ4 frame descriptor flags (FLG byte): version 01 in bits 7-6, content size in bit 3.
LZ4_VERSION_MASK, LZ4_VERSION, LZ4_CONTENT_SIZE, LZ4_DICT_ID = 0xC0, 0x40, 0x08, 0x01
LZ4_BLOCK_CHECKSUM, LZ4_CONTENT_CHECKSUM = 0x10, 0x04
LZ4_BLOCK_MAX = {4: 64 * 1024, 5: 256 * 1024, 6: 1024 * 1024, 7: 4 * 1024 * 1024}  # by BD bits


class LayoutError(ValueError):
    """An image whose header disagrees with its size or length; the text says how."""


@dataclass(frozen=True, slots=True)
class Layout:
    """What an image's header declares."""

    width: int
    height: int
    channels: int = 3  # 1 for grey
    bits: int = 8  # per channel


def check(
    format: str, data: Buffer, width: int | None = None, height: int | None = None
) -> Layout | None:
    """The layout of ``data`` (an image of ``format`` by its magic bytes) after checking
    it against ``width`` x ``height`` (when given) and against its own length; None for
    formats whose header this module does not read (JPEG, PNG, WebP). Raises nothing but
    `LayoutError`, whatever ``data`` holds."""
    try:
        return _check(format, data, width, height)
    except struct.error as exc:  # a field read past the end that a check did not foresee
        raise LayoutError(f"its header is cut short ({exc})") from None


def _check(format: str, data: Buffer, width: int | None, height: int | None) -> Layout | None:
    if format == "bmp":
        found = bmp_layout(data)
    elif format == "tiff":
        found = tiff_layout(data)
    elif format == "lz4":
        if width is None or height is None:
            raise LayoutError("the frame's size must be given for LZ4 raw pixels")
        content = lz4_content_size(data)
        expected = width * height * 3
        if content != expected:
            raise LayoutError(
                f"its content size is {content} bytes, but {width}x{height} BGR pixels "
                f"are {expected}"
            )
        return Layout(width, height)
    else:
        return None
    if width is not None and height is not None and (found.width, found.height) != (width, height):
        raise LayoutError(
            f"the image header says {found.width}x{found.height}, the frame {width}x{height}"
        )
    return found


# -- BMP ------------------------------------------------------------------------------


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit, top-down (negative height) BMP header for ``width`` x ``height`` pixels,
    as the user's panel builds it: the pixels that follow are B, G, R, rows top to
    bottom, each row padded to 4 bytes (no padding at the four sizes the panel knows)."""
    padding = (4 - width * 3 % 4) % 4
    file_size = BMP_HEADER_BYTES + (width * 3 + padding) * height
    return struct.pack(
        "<2sIHHIIiiHHIIiiII",
        b"BM",
        file_size,
        0,
        0,
        BMP_HEADER_BYTES,
        40,
        width,
        -height,
        1,
        24,
        0,  # BI_RGB
        0,
        0,
        0,
        0,
        0,
    )


def bmp_layout(data: Buffer) -> Layout:
    """The size and depth a BMP declares, after checking its length against them."""
    if len(data) < 26 or bytes(data[:2]) != b"BM":
        raise LayoutError("too short for a BMP header")
    (dib,) = struct.unpack_from("<I", data, 14)
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif dib >= 40 and len(data) >= 54:
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    else:
        raise LayoutError(f"an unknown BMP header (of {dib} bytes) or one cut short")
    height = abs(height)
    if width < 1 or height < 1:
        raise LayoutError(f"the BMP declares no area ({width}x{height})")
    if bpp not in (1, 4, 8, 16, 24, 32):
        raise LayoutError(f"the BMP declares {bpp} bits per pixel")
    (offset,) = struct.unpack_from("<I", data, 10)
    if compression in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS: rows as they are
        expected = offset + (width * bpp + 31) // 32 * 4 * height
        if not expected <= len(data) <= expected + BMP_TRAILING:
            raise LayoutError(
                f"its header (offset {offset}, {width}x{height} at {bpp} bits) means "
                f"{expected} bytes, but it has {len(data)}"
            )
    elif offset >= len(data):
        raise LayoutError(f"its pixels start at {offset}, past its end ({len(data)} bytes)")
    return Layout(width, height, 1 if bpp <= 8 else 3, 8)


# -- LZ4 frame ------------------------------------------------------------------------


def lz4_content_size(data: Buffer) -> int:
    """The content size an LZ4 frame's descriptor declares, after walking its blocks to
    the end mark: `LayoutError` when the descriptor is malformed or lacks the content
    size (the broker needs it to bound a decompression, and the worker always writes it:
    ``store_size=True``), when the blocks run past the end or stop short of it, or when
    they could not hold the declared size (each block holds at most the block maximum
    its descriptor names). Nothing is decompressed."""
    if len(data) < 7 or bytes(data[:4]) != b"\x04\x22\x4d\x18":
        raise LayoutError("not an LZ4 frame (magic 04 22 4D 18)")
    flags, block_descriptor = data[4], data[5]
    if flags & LZ4_VERSION_MASK != LZ4_VERSION:
        raise LayoutError(f"an LZ4 frame of unknown version (FLG {flags:#04x})")
    if not flags & LZ4_CONTENT_SIZE:
        raise LayoutError("the LZ4 frame does not declare its content size")
    block_max = LZ4_BLOCK_MAX.get(block_descriptor >> 4 & 7)
    if block_max is None:
        raise LayoutError(f"an LZ4 frame with an unknown block size (BD {block_descriptor:#04x})")
    start = 6 + 8 + (4 if flags & LZ4_DICT_ID else 0) + 1  # descriptor, then its checksum
    if len(data) < start:
        raise LayoutError("the LZ4 frame descriptor is cut short")
    (size,) = struct.unpack_from("<Q", data, 6)
    block_checksum = 4 if flags & LZ4_BLOCK_CHECKSUM else 0
    at, blocks, end = start, 0, len(data)
    while True:
        if at + 4 > end:
            raise LayoutError(f"the LZ4 frame is cut short after {blocks} blocks: truncated")
        (block,) = struct.unpack_from("<I", data, at)
        at += 4
        if block == 0:  # the end mark
            break
        length = block & 0x7FFFFFFF
        if length > block_max:
            raise LayoutError(f"an LZ4 block of {length} bytes, over the maximum {block_max}")
        at += length + block_checksum
        blocks += 1
    at += 4 if flags & LZ4_CONTENT_CHECKSUM else 0
    if at != end:
        raise LayoutError(f"the LZ4 frame ends at byte {at} of {end}")
    if size > blocks * block_max:
        raise LayoutError(
            f"the LZ4 frame declares {size} bytes of content, but its {blocks} blocks hold "
            f"at most {blocks * block_max}"
        )
    return int(size)


# -- TIFF -----------------------------------------------------------------------------

_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
WIDTH, LENGTH, BITS, COMPRESSION = 256, 257, 258, 259
STRIP_OFFSETS, SAMPLES, STRIP_COUNTS = 273, 277, 279
TILE_OFFSETS, TILE_COUNTS = 324, 325
_WANTED = frozenset(
    (
        WIDTH,
        LENGTH,
        BITS,
        COMPRESSION,
        STRIP_OFFSETS,
        SAMPLES,
        STRIP_COUNTS,
        TILE_OFFSETS,
        TILE_COUNTS,
    )
)


def tiff_layout(data: Buffer) -> Layout:
    """The size and depth the first directory of a (classic) TIFF declares, after
    checking that the directory and every strip or tile lie within ``data``."""
    head = bytes(data[:8])
    if len(head) < 8 or head[:4] not in (b"II*\x00", b"MM\x00*"):
        raise LayoutError("too short for a TIFF header")
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", head, 4)
    if ifd < 8 or ifd + 2 > len(data):
        raise LayoutError(
            f"its directory at {ifd} lies past its end ({len(data)} bytes): truncated"
        )
    (count,) = struct.unpack_from(order + "H", data, ifd)
    if count > MAX_TIFF_TAGS:
        raise LayoutError(f"its directory claims {count} tags (at most {MAX_TIFF_TAGS})")
    if ifd + 2 + 12 * count > len(data):
        raise LayoutError("its directory runs past its end: truncated")
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        tag, kind, n, _ = struct.unpack_from(order + "HHII", data, ifd + 2 + 12 * i)
        if tag not in _WANTED:
            continue
        code = _TIFF_TYPES.get(kind)
        if code is None or n > MAX_TIFF_STRIPS:
            raise LayoutError(f"TIFF tag {tag} has type {kind} and {n} values")
        size = struct.calcsize(code) * n
        where = ifd + 2 + 12 * i + 8
        if size > 4:
            (where,) = struct.unpack_from(order + "I", data, where)
        if where + size > len(data):
            raise LayoutError(f"TIFF tag {tag} lies past its end: truncated")
        tags[tag] = struct.unpack_from(f"{order}{n}{code}", data, where)
    try:
        width, height = tags[WIDTH][0], tags[LENGTH][0]
    except (KeyError, IndexError):
        raise LayoutError("its directory lacks the image width or length") from None
    if width < 1 or height < 1:
        raise LayoutError(f"the TIFF declares no area ({width}x{height})")
    samples = tags.get(SAMPLES, (1,))[0]
    bits = tags.get(BITS, (1,))[0]
    offsets = tags.get(STRIP_OFFSETS) or tags.get(TILE_OFFSETS)
    counts = tags.get(STRIP_COUNTS) or tags.get(TILE_COUNTS)
    if not offsets or not counts or len(offsets) != len(counts):
        raise LayoutError("its strips (or tiles) are not declared")
    end = max(o + c for o, c in zip(offsets, counts, strict=True))
    if end > len(data):
        raise LayoutError(f"its pixels run to byte {end}, past its end ({len(data)}): truncated")
    return Layout(width, height, samples, bits)
