"""A synthetic camera: a moving textured scene with the frame number and time on it.

Its JPEGs are about as large as a natural image's (≈130 KB at 1280x720, quality 80),
not a flat picture that compresses to nothing, so benchmarks move realistic bytes. The
texture is computed once; each frame is a moving window onto it plus a moving disc and
the text on a dark band.

Drawing is kept cheap because a worker pays it on every frame beside the JPEG encode
(``python -m benchmarks worker`` compares the two): the band is a cached image copied in
(the texture under it is never copied), and the text is pasted from glyphs rendered once
by ``cv2.putText``, which would otherwise cost about as much as the rest of the frame.
About 0.3 ms at 1280x720 on the 2-core test machine, half of it the one copy of the
texture window.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from cameras.sources import Capture, Image, Size, Source

FONT = cv2.FONT_HERSHEY_SIMPLEX
BAND_COLOUR = 30  # the band's grey level (B = G = R)
TEXT_COLOUR = (255, 255, 255)
GLYPHS = "frame 0123456789:."  # every character the two lines of text use


class TestPattern:
    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int, seed: int = 1) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        # Smooth colour blobs plus a little fine grain: JPEG sizes like a real scene.
        big_w, big_h = width * 2, height
        coarse = rng.integers(0, 256, (max(2, big_h // 16), max(2, big_w // 16), 3), np.uint8)
        texture = cv2.resize(coarse, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
        grain = rng.integers(0, 14, (big_h, big_w, 3), np.uint8)
        # A dark band over the top 30% keeps the text readable on the busy texture
        # (rows 0..int(0.3 h), as cv2.rectangle fills them); the texture under it is
        # never shown, so it is not kept.
        self._band_rows = min(height, int(height * 0.3) + 1)
        self._texture = np.ascontiguousarray(cv2.add(texture, grain)[self._band_rows :])
        self._scale = max(0.4, height / 720 * 2.0)
        self._thickness = max(1, int(self._scale * 2))
        self._glyphs = Glyphs(self._scale, self._thickness)

    def draw(self, seq: int, now: float | None = None) -> Image:
        """Frame ``seq`` (a new BGR array) captured at ``now`` (Unix seconds)."""
        now = time.time() if now is None else now
        w, h, rows = self.width, self.height, self._band_rows
        frame = np.empty((h, w, 3), np.uint8)
        frame[:rows] = BAND_COLOUR
        offset = (seq * 4) % w
        below = frame[rows:]
        below[...] = self._texture[:, offset : offset + w]
        centre = (int(w / 2 + w / 3 * math.cos(seq / 15)), int(h / 2 + h / 3 * math.sin(seq / 10)))
        # On the part below the band only: the band covers the top of the disc.
        cv2.circle(
            below, (centre[0], centre[1] - rows), max(4, h // 10), (40, 200, 250), -1, cv2.LINE_AA
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        for text, y in ((f"frame {seq}", 0.12), (stamp, 0.24)):
            origin = (int(w * 0.04), int(h * y))
            if not self._glyphs.paste(frame, text, origin, rows):
                cv2.putText(
                    frame,
                    text,
                    origin,
                    FONT,
                    self._scale,
                    TEXT_COLOUR,
                    self._thickness,
                    cv2.LINE_AA,
                )
        return frame


class Glyphs:
    """Text pasted instead of drawn. All but the last `TAIL` characters of a line (which
    change at most once a second: "frame 12", "12:34:56.") are rendered by ``cv2.putText``
    once and kept; each of the last characters is pasted from a glyph rendered once, at
    the advance ``putText`` would give it, with a per-pixel maximum so that neighbouring
    anti-aliased edges combine instead of overwriting each other. Everything is white on
    the band's grey, so a pasted tile is exactly what ``putText`` draws there."""

    TAIL = 3
    KEEP = 8  # rendered line starts kept (two lines, a few seconds)

    def __init__(self, scale: float, thickness: int) -> None:
        self.scale, self.thickness = scale, thickness
        sizes = {c: cv2.getTextSize(c, FONT, scale, thickness) for c in GLYPHS}
        self.ascent = max(size[1] for size, _ in sizes.values())
        descent = max(baseline for _, baseline in sizes.values())
        self.pad = thickness + 2
        self.tile_h = self.ascent + descent + 2 * self.pad
        self.advance = {
            c: cv2.getTextSize(c * 2, FONT, scale, thickness)[0][0] - size[0]
            for c, (size, _) in sizes.items()
        }
        self.glyphs = {c: self._render(c) for c in GLYPHS}
        self.heads: dict[str, Image] = {}

    def _render(self, text: str) -> Image:
        width = sum(self.advance[c] for c in text) + 2 * self.pad + self.thickness
        tile = np.full((self.tile_h, width, 3), BAND_COLOUR, np.uint8)
        cv2.putText(
            tile,
            text,
            (self.pad, self.pad + self.ascent),
            FONT,
            self.scale,
            TEXT_COLOUR,
            self.thickness,
            cv2.LINE_AA,
        )
        return tile

    def paste(self, frame: Image, text: str, origin: tuple[int, int], band_rows: int) -> bool:
        """Paste ``text`` with its baseline starting at ``origin``; False (nothing drawn)
        when a character has no glyph or the text would leave the band or the frame."""
        x, y = origin
        top = y - self.ascent - self.pad
        if not text or any(c not in self.advance for c in text):
            return False
        width = sum(self.advance[c] for c in text) + 2 * self.pad + self.thickness
        if top < 0 or top + self.tile_h > band_rows or x < self.pad or x + width > frame.shape[1]:
            return False
        head, tail = text[: -self.TAIL], text[-self.TAIL :]
        rows = slice(top, top + self.tile_h)
        if head:
            tile = self.heads.get(head)
            if tile is None:
                if len(self.heads) >= self.KEEP:
                    self.heads.clear()
                tile = self.heads[head] = self._render(head)
            frame[rows, x - self.pad : x - self.pad + tile.shape[1]] = tile  # on the band
            x += sum(self.advance[c] for c in head)
        for c in tail:
            tile = self.glyphs[c]
            region = frame[rows, x - self.pad : x - self.pad + tile.shape[1]]
            np.maximum(region, tile, out=region)
            x += self.advance[c]
        return True


class TestPatternSource(Source):
    """`TestPattern` as a source: never fails, resized by drawing at the new size."""

    __test__ = False

    def __init__(self, width: int, height: int) -> None:
        self.seq = 0
        self.reconfigure((width, height), 0, "")

    def reconfigure(self, size: Size | None, fps: float, fmt: str) -> None:
        if size is not None and size != self.size:  # about 25 ms at 720p: one frame late
            self.pattern = TestPattern(*size)
            self.size = size
            self.description = f"test pattern {size[0]}x{size[1]}"

    def read(self) -> Capture:
        now = time.time()
        image = self.pattern.draw(self.seq, now)
        self.seq += 1
        return Capture(now, image)
