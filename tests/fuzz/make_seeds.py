"""Writes the seed images of the upload fuzz target into corpus/seeds/ (run it again only
to change them; the files are kept in git so every run mutates the same seeds).

Small real images in every upload format and in the variants their parsers branch on:
PNG (RGB, RGBA, palette, 16-bit grey, OpenCV's libpng writer), JPEG (baseline,
progressive, grey, OpenCV's encoder, with EXIF), WebP (lossy VP8, lossless VP8L, with
alpha VP8X), BMP (24-bit, 8-bit palette, 32-bit, 1-bit, top-down).

    python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SEEDS = Path(__file__).resolve().parent / "corpus" / "seeds"


def picture(width: int = 24, height: int = 16) -> Image.Image:
    """A deterministic little picture with edges and gradients (not a flat colour, so the
    encoders use more of their syntax)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x ^ y) * 16 % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def pil(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    rgb = picture()
    bgr = np.asarray(rgb)[:, :, ::-1].copy()
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    exif = Image.Exif()
    exif[0x010F] = "camera-broker fuzz"  # Make
    return {
        "rgb.png": pil(rgb, "PNG"),
        "rgba.png": pil(rgba, "PNG"),
        "palette.png": pil(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "grey16.png": pil(rgb.convert("I;16"), "PNG"),
        "opencv.png": cv2.imencode(".png", bgr)[1].tobytes(),  # libpng's own writer
        "baseline.jpg": pil(rgb, "JPEG", quality=80),
        "progressive.jpg": pil(rgb, "JPEG", quality=80, progressive=True),
        "grey.jpg": pil(rgb.convert("L"), "JPEG", quality=60),
        "opencv.jpg": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
        "exif.jpg": pil(rgb, "JPEG", quality=70, exif=exif),
        "lossy.webp": pil(rgb, "WEBP", quality=70),
        "lossless.webp": pil(rgb, "WEBP", lossless=True),
        "alpha.webp": pil(rgba, "WEBP", quality=70),
        "rgb24.bmp": pil(rgb, "BMP"),
        "palette8.bmp": pil(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "BMP"),
        "rgba32.bmp": cv2.imencode(".bmp", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))[
            1
        ].tobytes(),
        "mono1.bmp": pil(rgb.convert("1"), "BMP"),
        "topdown.bmp": top_down(pil(rgb, "BMP")),
    }


def top_down(bmp: bytes) -> bytes:
    """The same BMP stored top row first: a negative height in its header."""
    height = int.from_bytes(bmp[22:26], "little", signed=True)
    return bmp[:22] + (-height).to_bytes(4, "little", signed=True) + bmp[26:]


def main() -> None:
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (SEEDS / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
