"""The "No Data" image clients see while their camera is offline.

Rendered with Pillow in the camera's last known shape, so a dashboard tile keeps its
aspect, and saying how long the camera has been silent. The size a camera declares is
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

from PIL import Image, ImageDraw, ImageFont

MAX_SIZE = (1920, 1080)  # the largest "No Data" image, whatever a camera declares
MIN_SIDE = 16
CACHE_ENTRIES = 64  # each a flat JPEG of some tens of KB at most


@dataclass(frozen=True, slots=True)
class Placeholder:
    data: bytes  # a JPEG
    width: int
    height: int


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
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class Placeholders:
    """Rendered "No Data" images, least recently used first out. Thread-safe: `cached`
    runs on the event loop, `render` in a worker thread; one render at a time, so a
    burst of requests for an offline camera renders once and holds one image in memory."""

    def __init__(self, entries: int = CACHE_ENTRIES, bound: tuple[int, int] = MAX_SIZE) -> None:
        self.entries, self.bound = entries, bound
        self._images: OrderedDict[tuple[str, int, int, str], Placeholder] = OrderedDict()
        self._lock = threading.Lock()  # guards _images
        self._rendering = threading.Lock()  # one render at a time
        self.renders = 0  # how many were rendered (the rest came from the cache)

    def _key(
        self, name: str, width: int, height: int, silent_for: float | None
    ) -> tuple[str, int, int, str]:
        return (name, *fit(width, height, self.bound), describe_silence(silent_for))

    def cached(
        self, name: str, width: int, height: int, silent_for: float | None
    ) -> Placeholder | None:
        key = self._key(name, width, height, silent_for)
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def render(self, name: str, width: int, height: int, silent_for: float | None) -> Placeholder:
        """The image, from the cache or rendered now (call it from a worker thread)."""
        key = self._key(name, width, height, silent_for)
        with self._rendering:
            with self._lock:
                image = self._images.get(key)
            if image is None:
                _, fitted_width, fitted_height, silence = key
                data = _render(name, fitted_width, fitted_height, silence)
                image = Placeholder(data, fitted_width, fitted_height)
                self.renders += 1
            with self._lock:
                self._images[key] = image
                self._images.move_to_end(key)
                while len(self._images) > self.entries:
                    self._images.popitem(last=False)
        return image

    def __len__(self) -> int:
        return len(self._images)


PLACEHOLDERS = Placeholders()  # shared by the offline watcher and the HTTP answers
