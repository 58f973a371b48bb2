"""The "No Data" image clients see while their camera is offline (seed 003's idea).

Rendered with Pillow at the camera's last known size, so a dashboard tile keeps its
shape, and saying how long the camera has been silent.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont


def describe_silence(seconds: float | None) -> str:
    if seconds is None:
        return "no frame received yet"
    seconds = int(seconds)
    if seconds < 120:
        return f"last frame {seconds} s ago"
    if seconds < 7200:
        return f"last frame {seconds // 60} min ago"
    return f"last frame {seconds // 3600} h ago"


def render(
    name: str, width: int, height: int, silent_for: float | None, quality: int = 70
) -> bytes:
    """A JPEG of ``width`` x ``height`` naming the camera, "offline" and the silence."""
    image = Image.new("RGB", (width, height), (38, 38, 42))
    draw = ImageDraw.Draw(image)
    big = max(10, min(width // 12, height // 6))
    lines = [
        (name, big, (235, 235, 235)),
        ("NO DATA · offline", max(8, big * 2 // 3), (230, 80, 70)),
        (describe_silence(silent_for), max(8, big // 2), (170, 170, 170)),
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
