"""A JPEG for outputs that need a browser image (snapshot, MJPEG, the viewer page's
tiles), made from a frame of a raw format (BMP, TIFF, LZ4): `to_jpeg`.

Pure and synchronous, and slow at large sizes (a 4K LZ4 frame: about 30 ms to
decompress, 50 ms to encode, with Pillow): callers run it in a worker thread, once per
frame and only while someone watches such an output (`broker.serve.derive`). Every input
is bounded before it is decoded: the layout its header declares must agree with the
frame's size (`broker.protocol.layout`), and an LZ4 frame is decompressed to at most
width x height x 3 bytes (`decompress_lz4`).
"""

from __future__ import annotations

import io
import warnings

import lz4.frame
from PIL import Image

from broker.protocol import layout, stamp

# The formats a browser output gets as a JPEG derived from each frame. PNG and WebP are
# browser images already; BMP is too, but at 4K it is 25 MB per frame for an <img>.
DERIVED_FORMATS = frozenset(("bmp", "tiff", "lz4"))
PILLOW_FORMATS = {"bmp": "BMP", "tiff": "TIFF"}
QUALITY = 80

Buffer = bytes | bytearray | memoryview


class TranscodeError(ValueError):
    """A frame that cannot be turned into a JPEG; the text says why."""


def needs_jpeg(format: str) -> bool:
    """True when a browser output of a camera sending ``format`` gets derived JPEGs."""
    return format in DERIVED_FORMATS


def decompress_lz4(data: Buffer, size: int) -> bytes:
    """The content of one LZ4 frame that must hold exactly ``size`` bytes: decompressed
    to at most that many, so a frame lying about its content costs no more memory than
    an honest one; `layout.LayoutError` when it holds anything else."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        pixels = decompressor.decompress(data, max_length=size)
    except RuntimeError as exc:  # the lz4 package's error for a corrupt frame
        raise layout.LayoutError(f"it does not decompress: {exc}") from None
    if len(pixels) != size or not decompressor.eof or decompressor.unused_data:
        more = "more than " if not decompressor.eof else ""
        raise layout.LayoutError(f"it holds {more}{len(pixels)} bytes, not the {size} it declares")
    return pixels


def decode(format: str, data: Buffer, width: int, height: int) -> Image.Image:
    """The pixels of a ``format`` frame of ``width`` x ``height``, as an RGB or L image."""
    try:
        layout.check(format, data, width, height)
        if format == "lz4":
            pixels = decompress_lz4(data, width * height * 3)
            return Image.frombuffer("RGB", (width, height), pixels, "raw", "BGR", 0, 1)
    except layout.LayoutError as exc:
        raise TranscodeError(f"a broken {format} frame: {exc}") from None
    if format not in PILLOW_FORMATS:
        raise TranscodeError(f"no JPEG is derived from {format}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size was checked above
            image: Image.Image = Image.open(io.BytesIO(data), formats=[PILLOW_FORMATS[format]])
            if image.size != (width, height):
                raise TranscodeError(f"the image is {image.size}, the frame {width}x{height}")
            image.load()
    except TranscodeError:
        raise
    except Exception as exc:  # Pillow raises many unrelated types on hostile data
        raise TranscodeError(f"a broken {format} frame: {str(exc)[:200]}") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return image


def to_jpeg(
    format: str, data: Buffer, width: int, height: int, seq: int, captured_at: float
) -> bytes:
    """A JPEG of the frame, stamped (``COM``, `broker.protocol.stamp`) with its sequence
    number and capture time, so viewers of derived outputs measure latency as for a
    camera's own JPEGs; `TranscodeError` when the frame is broken."""
    image = decode(format, data, width, height)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY)
    return stamp.stamp(out.getvalue(), seq, captured_at)
