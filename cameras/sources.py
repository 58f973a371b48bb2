"""Where frames come from: the test pattern, an OpenCV capture (V4L2 device, video
file, rtsp/http URL) or a folder of images.

A source is opened, read until it fails, and closed; the worker reopens a failed
source with backoff. ``read`` returns a `Capture`: a BGR image, or (MJPEG passthrough)
the camera's own JPEG bytes, forwarded untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cameras.testpattern import TestPattern

log = logging.getLogger("camera-worker")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# FFmpeg's own default is 30 s: a stalled or silent URL would hold the worker (and a
# SIGTERM) that long. Real cameras answer well within this.
STREAM_TIMEOUT_MS = 5000


class SourceError(Exception):
    """The source cannot deliver (missing device, unreachable URL, unreadable file)."""


@dataclass(slots=True)
class Capture:
    captured_at: float
    image: np.ndarray | None = None  # BGR
    jpeg: bytes | None = None  # the camera's own MJPEG frame, forwarded as is
    jpeg_size: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        if self.image is not None:
            return self.image.shape[1], self.image.shape[0]
        return 0, 0


class Source:
    description = "source"

    def open(self) -> None: ...

    def read(self) -> Capture:
        raise NotImplementedError

    def close(self) -> None: ...


class TestPatternSource(Source):
    __test__ = False

    def __init__(self, width: int, height: int) -> None:
        self.pattern = TestPattern(width, height)
        self.seq = 0
        self.description = f"test pattern {width}x{height}"

    def read(self) -> Capture:
        now = time.time()
        image = self.pattern.draw(self.seq, now)
        self.seq += 1
        return Capture(now, image)


def use_passthrough(fmt: str, requested: tuple[int, int] | None, delivered: tuple[int, int],
                    fourcc: str) -> bool:  # fmt: skip
    """Forward the camera's MJPEG bytes untouched? Only when they are exactly what was asked."""
    return fmt == "jpeg" and fourcc == "MJPG" and (requested is None or requested == delivered)


def fourcc_name(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))


class CaptureSource(Source):
    """cv2.VideoCapture over a V4L2 device, a video file (looped) or a URL."""

    def __init__(self, target: str, *, device: bool, size: tuple[int, int] | None,
                 fps: float, fmt: str) -> None:  # fmt: skip
        self.target, self.device, self.size, self.fps, self.fmt = target, device, size, fps, fmt
        self.is_file = not device and Path(target).is_file()
        self.description = ("device " if device else "") + target
        self.capture: cv2.VideoCapture | None = None
        self.passthrough = False
        self.passthrough_refused = False  # the driver once gave non-JPEG bytes: decode
        self.delivered = (0, 0)

    def open(self) -> None:
        if self.device:
            index: int | str = int(self.target) if self.target.isdigit() else self.target
            capture = cv2.VideoCapture(index, cv2.CAP_V4L2)
        elif "://" in self.target:
            capture = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
            ])  # fmt: skip
        else:
            capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.description}")
        if self.device:
            self._configure_device(capture)
        self.capture = capture

    def _configure_device(self, capture: cv2.VideoCapture) -> None:
        # Ask for the camera's own MJPEG: forwarding it saves a decode and a re-encode.
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if self.size:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # no stale frames queued in the driver
        delivered = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))  # fmt: skip
        fourcc = fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
        self.delivered = delivered
        self.passthrough = not self.passthrough_refused and use_passthrough(
            self.fmt, self.size, delivered, fourcc
        )
        if self.passthrough:
            capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        mode = "forwarding its MJPEG untouched" if self.passthrough else "decoding and encoding"
        log.info("%s: %dx%d %s, %s", self.description, *delivered, fourcc, mode)

    def read(self) -> Capture:
        assert self.capture is not None
        ok, frame = self.capture.read()
        now = time.time()
        if not ok and self.is_file:  # end of the file: loop
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok or frame is None:
            raise SourceError(f"{self.description}: no frame (unplugged or stream ended)")
        if self.passthrough:
            jpeg = frame.tobytes()
            if not jpeg.startswith(b"\xff\xd8"):  # CONVERT_RGB=0 gave raw pixels instead
                self.passthrough_refused = True
                raise SourceError(f"{self.description}: MJPEG passthrough gave no JPEG; decoding")
            return Capture(now, jpeg=jpeg, jpeg_size=self.delivered)
        return Capture(now, frame)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class FolderSource(Source):
    """The images of a folder, in name order, cycled."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"images in {folder}"
        self.paths: list[Path] = []
        self.index = 0
        self.unreadable: set[Path] = set()  # logged once each, then skipped

    def open(self) -> None:
        self.unreadable.clear()  # a reopen gives replaced files another chance
        try:
            self.paths = sorted(
                p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
        except OSError as exc:
            raise SourceError(f"cannot read {self.folder}: {exc}") from None
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")

    def read(self) -> Capture:
        # One bad file must not stall the camera: skip it; fail only if none decode.
        for _ in range(len(self.paths)):
            path = self.paths[self.index % len(self.paths)]
            self.index += 1
            if path in self.unreadable:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return Capture(time.time(), image)
            log.warning("cannot decode %s; skipping it", path)
            self.unreadable.add(path)
        raise SourceError(f"none of the images in {self.folder} can be decoded")


def make_source(source: str | None, device: str | None, size: tuple[int, int] | None,
                fps: float, fmt: str) -> Source:  # fmt: skip
    if device:
        return CaptureSource(device, device=True, size=size, fps=fps, fmt=fmt)
    assert source is not None
    if source == "test-pattern":
        return TestPatternSource(*(size or (1280, 720)))
    if Path(source).is_dir():
        return FolderSource(Path(source))
    return CaptureSource(source, device=False, size=size, fps=fps, fmt=fmt)
