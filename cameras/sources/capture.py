"""A video file (looped at its end) or an rtsp/http URL, through OpenCV's
``cv2.VideoCapture`` (FFmpeg). Frames arrive at whatever size the file or stream has:
the worker resizes and re-encodes them in software."""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from cameras.sources import Capture, Image, Size, Source, SourceError

# FFmpeg's own default is 30 s: a stalled or silent URL would hold the worker (and a
# SIGTERM) that long. Real cameras answer well within this.
STREAM_TIMEOUT_MS = 5000


class CaptureSource(Source):
    """``cv2.VideoCapture`` over a file or a URL; `cameras.sources.v4l2` extends it for
    a device."""

    def __init__(self, target: str, *, size: Size | None, fps: float, fmt: str) -> None:
        self.target, self.size, self.fps, self.fmt = target, size, fps, fmt
        self.is_file = Path(target).is_file()
        self.description = target
        self.capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        capture = self.open_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.description}")
        self.capture = capture

    def open_capture(self) -> cv2.VideoCapture:
        if "://" in self.target:
            return cv2.VideoCapture(
                self.target,
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS,
                ],
            )
        return cv2.VideoCapture(self.target)

    def reconfigure(self, size: Size | None, fps: float, fmt: str) -> None:
        self.size, self.fps, self.fmt = size, fps, fmt  # applied in software

    def read(self) -> Capture:
        return Capture(*self.grab())

    def grab(self) -> tuple[float, Image]:
        """The next frame and when it was captured (Unix seconds)."""
        assert self.capture is not None
        ok, frame = self.capture.read()
        now = time.time()
        if not ok and self.is_file:  # end of the file: loop
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok or frame is None:
            raise SourceError(f"{self.description}: no frame (unplugged or stream ended)")
        return now, frame

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None
