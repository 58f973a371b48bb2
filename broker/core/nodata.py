"""The "No Data" image clients see while their camera is offline.

Rendered with Pillow in the camera's last known shape, so a dashboard tile keeps its
aspect, and saying how long the camera has been silent; always as a JPEG (for browser
outputs) and, for a camera of another format, in that format too, so a client that
decodes only the camera's format (the Grafana panel forced to TIFF, BMP or LZ4) shows it:
a TIFF or BMP of the same fitted size; for LZ4, raw BGR pixels at a size the panel
recognises (`lz4_size`). The size a camera declares is
not trusted: the image fits within `MAX_SIZE` (at least `MIN_SIDE` pixels a side), so
a header claiming 16384x16384 costs what a 1080p image costs. Rendered images are kept
in a small LRU cache (`Placeholders`) per name, size and text, so snapshot bursts and
many offline cameras do not render again each time. Rendering takes tens of ms: the
callers run it off the event loop (`broker.ingest.offline.no_data_image`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import lz4.frame
from PIL import Image, ImageDraw, ImageFont

MAX_SIZE = (1920, 1080)  # the largest "No Data" image, whatever a camera declares
MIN_SIDE = 16
CACHE_ENTRIES = 64  # each a flat JPEG of some tens of KB at most, or a flat raw image
# The sizes the Grafana panel's image/lz4 mode recognises (it infers the size from the
# number of pixels), largest first.
PANEL_SIZES = ((3840, 2160), (1920, 1080), (1280, 720), (640, 480))
NATIVE_FORMATS = frozenset(("tiff", "bmp", "lz4"))  # rendered in their own format too


@dataclass(frozen=True, slots=True)
class Placeholder:
    data: bytes  # a JPEG
    width: int
    height: int
    format: str = "jpeg"  # of `native`
    native: bytes = b""  # the image in the camera's format ("" when it is the JPEG)
    native_width: int = 0
    native_height: int = 0

    @property
    def image(self) -> tuple[str, bytes, int, int]:
        """(format, data, width, height) of the image in the camera's own format."""
        if not self.native:
            return "jpeg", self.data, self.width, self.height
        return self.format, self.native, self.native_width, self.native_height


def lz4_size(width: int, height: int) -> tuple[int, int]:
    """The size of an LZ4 camera's "No Data" image: its own when the panel recognises it
    (`PANEL_SIZES`), else the largest such size within it, else 640x480 (the panel shows
    only these four sizes in LZ4 mode; the camera's own frames of any other size fail
    there anyway, and other clients read the size from the frame header)."""
    if (width, height) in PANEL_SIZES:
        return width, height
    for size in PANEL_SIZES:
        if size[0] <= width and size[1] <= height:
            return size
    return PANEL_SIZES[-1]


def describe_silence(seconds: float | None) -> str:
    if seconds is None:
        return "no frame received yet"
    seconds = int(seconds)
    if seconds < 120:
        return f"last frame {seconds} s ago"
    if seconds < 7200:
        return f"last frame {seconds // 60} min ago"
    return f"last frame {seconds // 3600} h ago"


def fit(width: int, height: int, bound: tuple[int, int] = MAX_SIZE) -> tuple[int, int]:
    """``width`` x ``height`` scaled down (never up) to fit within ``bound``, aspect kept,
    each side at least `MIN_SIDE` (a 70000x10 strip becomes 1920x16)."""
    width, height = max(1, width), max(1, height)
    scale = min(1.0, bound[0] / width, bound[1] / height)
    return (
        min(bound[0], max(MIN_SIDE, round(width * scale))),
        min(bound[1], max(MIN_SIDE, round(height * scale))),
    )


def render(
    name: str, width: int, height: int, silent_for: float | None, quality: int = 70
) -> bytes:
    """A JPEG of ``width`` x ``height`` naming the camera, "offline" and the silence.
    The caller bounds the size (`fit`)."""
    return _render(name, width, height, describe_silence(silent_for), quality)


def _render(name: str, width: int, height: int, silence: str, quality: int = 70) -> bytes:
    out = io.BytesIO()
    _draw(name, width, height, silence).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def encode_native(image: Image.Image, format: str) -> bytes:
    """``image`` (RGB) as a TIFF (uncompressed, 8-bit RGB), a BMP (24-bit), or an LZ4
    frame of its raw pixels (B, G, R, rows top to bottom, no padding)."""
    if format == "lz4":
        pixels = image.tobytes("raw", "BGR")
        return bytes(lz4.frame.compress(pixels, compression_level=0, store_size=True))
    out = io.BytesIO()
    image.save(out, format={"tiff": "TIFF", "bmp": "BMP"}[format])
    return out.getvalue()


def _draw(name: str, width: int, height: int, silence: str) -> Image.Image:
    image = Image.new("RGB", (width, height), (38, 38, 42))
    draw = ImageDraw.Draw(image)
    big = max(10, min(width // 12, height // 6))
    lines = [
        (name, big, (235, 235, 235)),
        ("NO DATA · offline", max(8, big * 2 // 3), (230, 80, 70)),
        (silence, max(8, big // 2), (170, 170, 170)),
    ]
    fonts = [ImageFont.load_default(size=size) for _, size, _ in lines]
    heights = [size * 1.3 for _, size, _ in lines]
    y = (height - sum(heights)) / 2
    for (text, _, colour), font, line_height in zip(lines, fonts, heights, strict=True):
        draw.text((width / 2, y + line_height / 2), text, font=font, fill=colour, anchor="mm")
        y += line_height
    return image


class Placeholders:
    """Rendered "No Data" images, least recently used first out. Thread-safe: `cached`
    runs on the event loop, `render` in a worker thread; one render at a time, so a
    burst of requests for an offline camera renders once and holds one image in memory."""

    def __init__(self, entries: int = CACHE_ENTRIES, bound: tuple[int, int] = MAX_SIZE) -> None:
        self.entries, self.bound = entries, bound
        self._images: OrderedDict[tuple[str, int, int, str, str], Placeholder] = OrderedDict()
        self._lock = threading.Lock()  # guards _images
        self._rendering = threading.Lock()  # one render at a time
        self.renders = 0  # how many were rendered (the rest came from the cache)

    def _key(
        self, name: str, width: int, height: int, silent_for: float | None, format: str
    ) -> tuple[str, int, int, str, str]:
        format = format if format in NATIVE_FORMATS else "jpeg"
        size = lz4_size(width, height) if format == "lz4" else fit(width, height, self.bound)
        return (name, *size, describe_silence(silent_for), format)

    def cached(
        self,
        name: str,
        width: int,
        height: int,
        silent_for: float | None,
        format: str = "jpeg",
    ) -> Placeholder | None:
        key = self._key(name, width, height, silent_for, format)
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def render(
        self,
        name: str,
        width: int,
        height: int,
        silent_for: float | None,
        format: str = "jpeg",
    ) -> Placeholder:
        """The image, from the cache or rendered now (call it from a worker thread):
        a JPEG, and in ``format`` too when that is TIFF, BMP or LZ4."""
        key = self._key(name, width, height, silent_for, format)
        with self._rendering:
            with self._lock:
                image = self._images.get(key)
            if image is None:
                image = self._make(name, *key[1:])
                self.renders += 1
            with self._lock:
                self._images[key] = image
                self._images.move_to_end(key)
                while len(self._images) > self.entries:
                    self._images.popitem(last=False)
        return image

    def _make(self, name: str, width: int, height: int, silence: str, format: str) -> Placeholder:
        # Drawn within the usual bound (the JPEG for browsers); an LZ4 image at a larger
        # size the panel knows (4K) is that drawing scaled up, pixels repeated: drawing
        # and scaling at 4K would take half a second a second while the camera is away.
        jpeg_size = fit(width, height, self.bound) if format == "lz4" else (width, height)
        drawn = _draw(name, *jpeg_size, silence)
        out = io.BytesIO()
        drawn.save(out, format="JPEG", quality=70)
        if format == "jpeg":
            return Placeholder(out.getvalue(), *jpeg_size)
        if drawn.size != (width, height):
            drawn = drawn.resize((width, height), Image.Resampling.NEAREST)
        native = encode_native(drawn, format)
        return Placeholder(out.getvalue(), *jpeg_size, format, native, width, height)

    def __len__(self) -> int:
        return len(self._images)


PLACEHOLDERS = Placeholders()  # shared by the offline watcher and the HTTP answers
