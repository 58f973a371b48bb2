"""Encoding frames (BGR uint8 arrays) into the output formats. Pure.

``tiff``: uncompressed (libtiff's LZW would triple the time and, on noisy images, grow
the file), 8-bit RGB, or with ``tiff_depth=16`` 16-bit greyscale for scientific viewers
(an 8-bit source is scaled by 257, so 255 becomes 65535).

``lz4``: one LZ4 frame (`lz4.frame`, fast mode, the content size in its header) of the
raw pixels: B, G, R, rows top to bottom, no padding, which is what the user's Grafana
panel expects in its ``image/lz4`` mode (docs/protocol.md, "Formats").
"""

from __future__ import annotations

import cv2
import lz4.frame
import numpy as np

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff"}
TIFF_DEPTHS = (8, 16)


def encode(image: np.ndarray, fmt: str, quality: int, tiff_depth: int = 8) -> bytes:
    """``image`` as ``fmt``; ``quality`` 1..100 (JPEG/WebP quality, PNG effort; none for
    BMP, TIFF and LZ4, which are lossless)."""
    if fmt == "lz4":
        return lz4_frame(image)
    if fmt == "jpeg":  # OpenCV's default chroma subsampling is 4:2:0, the fast, small one
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif fmt == "png":  # higher quality → less effort: PNG is lossless either way
        # 100 → 1, 80 → 2, 1 → 9. Not 0: that stores the pixels uncompressed (2.7 MB at 720p).
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1 + (100 - quality) * 8 // 99]
    elif fmt == "bmp":
        params = []
    elif fmt == "tiff":
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # none
        if tiff_depth == 16:
            image = grey16(image)
        elif tiff_depth != 8:
            raise ValueError(f"TIFF depth must be 8 or 16, got {tiff_depth}")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    ok, buffer = cv2.imencode(EXTENSIONS[fmt], image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buffer.tobytes()


def grey16(image: np.ndarray) -> np.ndarray:
    """A 16-bit greyscale image of ``image`` (8-bit BGR or grey, or 16-bit grey already)."""
    if image.dtype == np.uint16 and image.ndim == 2:
        return image
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image.astype(np.uint16) * 257


def lz4_frame(image: np.ndarray) -> bytes:
    """The BGR pixels of ``image`` as one LZ4 frame, without copying them first."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"LZ4 raw frames carry 8-bit BGR pixels, got {image.dtype} {image.shape}")
    pixels = np.ascontiguousarray(image)
    return lz4.frame.compress(pixels.data, compression_level=0, store_size=True)
