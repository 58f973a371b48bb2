"""A synthetic camera: a moving textured scene with the frame number and time on it.

Its JPEGs are about as large as a natural image's (≈140 KB at 1280x720, quality 80),
not a flat picture that compresses to nothing, so benchmarks move realistic bytes. The
texture is computed once; each frame is a moving window onto it plus a moving disc and
the text, so drawing costs about a millisecond.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np


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
        self._texture = cv2.add(texture, grain)
        self._scale = max(0.4, height / 720 * 2.0)

    def draw(self, seq: int, now: float | None = None) -> np.ndarray:
        now = time.time() if now is None else now
        offset = (seq * 4) % self.width
        frame = self._texture[:, offset : offset + self.width].copy()
        w, h = self.width, self.height
        centre = (int(w / 2 + w / 3 * math.cos(seq / 15)), int(h / 2 + h / 3 * math.sin(seq / 10)))
        cv2.circle(frame, centre, max(4, h // 10), (40, 200, 250), -1, cv2.LINE_AA)
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        # A dark band keeps the text readable on the busy texture.
        cv2.rectangle(frame, (0, 0), (w, int(h * 0.3)), (30, 30, 30), -1)
        for text, y in ((f"frame {seq}", 0.12), (stamp, 0.24)):
            origin = (int(w * 0.04), int(h * y))
            cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self._scale,
                        (255, 255, 255), max(1, int(self._scale * 2)), cv2.LINE_AA)  # fmt: skip
        return frame
