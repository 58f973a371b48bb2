"""The detectors: each needs nothing downloaded (OpenCV ships the face cascades and the
HOG people detector; an ONNX model is the user's own file).

A detector takes one decoded, downscaled BGR image and returns the objects found, each
with a label, a confidence in 0..1 and a box in that image's pixels (the analyzer scales
boxes back to frame coordinates). `Motion` is a state per camera instead: it says when
motion starts and when it has stopped.

Confidences: OpenCV's detectors give scores of their own scale, mapped onto 0..1 so one
``ai_confidence`` works for every model: a Haar cascade's level weight w as w / (w + 2)
(a clear frontal face has w of about 3-6: 0.6-0.75), a HOG SVM weight / 2 (about 0.5-2
for people), an ONNX model's class score as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("camera-analyzer")

# Frames a new background model learns from before it may report motion.
MOTION_WARMUP = 3


@dataclass(frozen=True, slots=True)
class Found:
    label: str
    confidence: float  # 0..1
    box: tuple[int, int, int, int]  # x, y, w, h in the analysed image's pixels


class Motion:
    """Background subtraction (MOG2) on a small grey image: motion is ``min_area`` (a
    fraction of the image) or more in the foreground mask after an opening removes
    speckle noise; it stops after ``settle`` seconds (of capture time) without."""

    def __init__(self, min_area: float, settle: float) -> None:
        self.min_area = min_area
        self.settle = settle
        self.subtractor = cv2.createBackgroundSubtractorMOG2(
            history=100, varThreshold=32, detectShadows=False
        )
        self.kernel = np.ones((3, 3), np.uint8)
        self.frames = 0
        self.active = False
        self.last_motion = 0.0  # capture time of the last frame with motion
        self.peak = 0.0  # the largest area of the current motion

    def area(self, grey: np.ndarray) -> float:
        mask = self.subtractor.apply(cv2.GaussianBlur(grey, (5, 5), 0))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        self.frames += 1
        return float(np.count_nonzero(mask)) / mask.size

    def update(self, grey: np.ndarray, captured_at: float) -> tuple[bool, float] | None:
        """(active, area) when motion started or stopped with this frame, else None."""
        area = self.area(grey)
        if self.frames <= MOTION_WARMUP:
            return None
        moving = area >= self.min_area
        if moving:
            self.last_motion = captured_at
            self.peak = max(self.peak, area)
            if not self.active:
                self.active = True
                return True, area
        elif self.active and captured_at - self.last_motion >= self.settle:
            self.active = False
            peak, self.peak = self.peak, 0.0
            return False, peak
        return None


class Faces:
    """OpenCV's frontal face Haar cascade (``cv2.data.haarcascades``)."""

    label = "face"

    def __init__(self) -> None:
        folder = cv2.data.haarcascades  # type: ignore[attr-defined]
        path = Path(folder) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the face cascade {path}")

    def detect(self, image: np.ndarray) -> list[Found]:
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self.cascade.detectMultiScale3(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24), outputRejectLevels=True
        )
        return [
            Found(self.label, _unit(float(w) / (float(w) + 2)), _box(b))
            for b, w in zip(boxes, np.ravel(weights), strict=False)
        ]


class People:
    """OpenCV's HOG descriptor with its default people (pedestrian) SVM: upright, whole
    bodies at least 64x128 pixels in the analysed image."""

    label = "person"

    def __init__(self) -> None:
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector()))

    def detect(self, image: np.ndarray) -> list[Found]:
        if image.shape[0] < 128 or image.shape[1] < 64:
            return []
        boxes, weights = self.hog.detectMultiScale(
            image, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        return [
            Found(self.label, _unit(float(w) / 2), _box(b))
            for b, w in zip(boxes, np.ravel(weights), strict=False)
        ]


class Onnx:
    """A user's ONNX detection model run with OpenCV DNN. Output: YOLO-style rows of
    [cx, cy, w, h, score per class] in input pixels, as (1, N, 4+C) or (1, 4+C, N)."""

    def __init__(self, model: str, labels: str, size: int) -> None:
        self.net = cv2.dnn.readNetFromONNX(model)
        self.size = size
        self.labels = (
            [line.strip() for line in Path(labels).read_text(encoding="utf-8").splitlines()]
            if labels
            else []
        )

    def detect(self, image: np.ndarray, threshold: float = 0.25) -> list[Found]:
        height, width = image.shape[:2]
        blob = cv2.dnn.blobFromImage(
            image, 1 / 255, (self.size, self.size), swapRB=True, crop=False
        )
        self.net.setInput(blob)
        out = np.asarray(self.net.forward())
        rows = out.reshape(out.shape[-2], out.shape[-1]) if out.ndim >= 2 else out
        if rows.shape[0] < rows.shape[1]:  # (4 + C, N): one column per candidate
            rows = rows.T
        if rows.shape[1] < 5:
            return []
        scores = rows[:, 4:]
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(rows)), classes]
        keep = best >= threshold
        sx, sy = width / self.size, height / self.size
        boxes = [
            [int((cx - w / 2) * sx), int((cy - h / 2) * sy), int(w * sx), int(h * sy)]
            for cx, cy, w, h in rows[keep, :4]
        ]
        confidences = [float(c) for c in best[keep]]
        kept = cv2.dnn.NMSBoxes(boxes, confidences, threshold, 0.45) if boxes else []
        found = []
        for i in np.ravel(kept):
            index = int(classes[keep][i])
            label = self.labels[index] if index < len(self.labels) else f"class {index}"
            found.append(Found(label[:64] or "object", _unit(confidences[i]), _box(boxes[i])))
        return found


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _box(box: Any) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    return max(0, x), max(0, y), max(0, w), max(0, h)
