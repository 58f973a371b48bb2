"""Encoding frames (BGR uint8 arrays) into the output formats. Pure."""

from __future__ import annotations

import cv2
import numpy as np

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp"}


def encode(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """``image`` as ``fmt``; ``quality`` 1..100 (JPEG/WebP quality, PNG effort, BMP none)."""
    if fmt == "jpeg":  # OpenCV's default chroma subsampling is 4:2:0, the fast, small one
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif fmt == "png":  # higher quality → less effort: PNG is lossless either way
        # 100 → 1, 80 → 2, 1 → 9. Not 0: that stores the pixels uncompressed (2.7 MB at 720p).
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1 + (100 - quality) * 8 // 99]
    elif fmt == "bmp":
        params = []
    else:
        raise ValueError(f"unknown format {fmt!r}")
    ok, buffer = cv2.imencode(EXTENSIONS[fmt], image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buffer.tobytes()
