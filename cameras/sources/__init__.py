"""Where frames come from: the test pattern, an OpenCV capture (V4L2 device, video
file, rtsp/http URL) or a folder of images.

A source is opened, read until it fails, and closed; the worker reopens a failed
source with backoff. ``read`` returns a `Capture`: a BGR image, or (MJPEG passthrough)
the camera's own JPEG bytes, forwarded untouched.

Settings changed while running reach a source through `Source.reconfigure` (size, fps,
format: what it should deliver if it can; the worker converts whatever else arrives) and
`Source.set_controls` (image settings a V4L2 device applies itself; the worker applies
the rest in software, see `cameras.adjust`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cameras.sources.testpattern import TestPattern

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
    size: tuple[int, int] | None = None  # the frame size, when known before a frame

    def open(self) -> None: ...

    def read(self) -> Capture:
        raise NotImplementedError

    def close(self) -> None: ...

    def reconfigure(self, size: tuple[int, int] | None, fps: float, fmt: str) -> None:
        """Deliver this from now on (and after a reopen) if you can. May raise
        `SourceError` when a reopen it needed failed."""

    def set_controls(self, settings: Mapping[str, Any]) -> frozenset[str]:
        """Apply image settings in hardware where possible: the keys applied."""
        return frozenset()


class TestPatternSource(Source):
    __test__ = False

    def __init__(self, width: int, height: int) -> None:
        self.seq = 0
        self.reconfigure((width, height), 0, "")

    def reconfigure(self, size: tuple[int, int] | None, fps: float, fmt: str) -> None:
        if size is not None and size != self.size:  # about 25 ms at 720p: one frame late
            self.pattern = TestPattern(*size)
            self.size = size
            self.description = f"test pattern {size[0]}x{size[1]}"

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


# -- V4L2 controls --------------------------------------------------------------------
# OpenCV passes CAP_PROP_BRIGHTNESS & co. to the driver as raw values (with CAP_PROP_MODE
# 0) but cannot tell their range, so it is asked directly (VIDIOC_QUERYCTRL). Not tested
# on real hardware: the test machine has no camera.

# setting → (OpenCV property, V4L2 control id from linux/v4l2-controls.h)
V4L2_CONTROLS = {
    "brightness": (cv2.CAP_PROP_BRIGHTNESS, 0x00980900),
    "contrast": (cv2.CAP_PROP_CONTRAST, 0x00980901),
    "saturation": (cv2.CAP_PROP_SATURATION, 0x00980902),
    "sharpness": (cv2.CAP_PROP_SHARPNESS, 0x0098091B),
    "auto_exposure": (cv2.CAP_PROP_AUTO_EXPOSURE, 0x009A0901),  # a menu: 1 manual, 3 auto
    "exposure_time": (cv2.CAP_PROP_EXPOSURE, 0x009A0902),  # 100 µs units, like ours
}
V4L2_EXPOSURE_MANUAL, V4L2_EXPOSURE_APERTURE_PRIORITY = 1, 3
VIDIOC_QUERYCTRL = 0xC0445624  # _IOWR('V', 36, struct v4l2_queryctrl), 68 bytes
QUERYCTRL = struct.Struct("=II32siiiiI8x")  # id, type, name, min, max, step, default, flags
V4L2_CTRL_FLAG_DISABLED, V4L2_CTRL_FLAG_READ_ONLY = 0x1, 0x4


@dataclass(frozen=True, slots=True)
class ControlRange:
    lo: int
    hi: int
    default: int


def query_control(path: str, control_id: int) -> ControlRange | None:
    """The range of one V4L2 control, or None when the device lacks it or it is
    disabled or read-only."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buffer = bytearray(QUERYCTRL.pack(control_id, 0, b"", 0, 0, 0, 0, 0))
        fcntl.ioctl(fd, VIDIOC_QUERYCTRL, buffer)
    except OSError:
        return None
    finally:
        os.close(fd)
    _, _, _, lo, hi, _, default, flags = QUERYCTRL.unpack(buffer)
    if flags & (V4L2_CTRL_FLAG_DISABLED | V4L2_CTRL_FLAG_READ_ONLY):
        return None
    return ControlRange(lo, hi, default)


def device_value(value: int, limits: ControlRange) -> int:
    """Our 0..100 (50 = as the camera delivers) onto a control's range: 50 is the
    driver's default, 0 its minimum, 100 its maximum, linear in between."""
    if value <= 50:
        return round(limits.default - (limits.default - limits.lo) * (50 - value) / 50)
    return round(limits.default + (limits.hi - limits.default) * (value - 50) / 50)


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
        self.ranges: dict[str, ControlRange] = {}  # the device's controls we can map onto
        self.touched: set[str] = set()  # controls we have set: reset to default when neutral

    @property
    def device_path(self) -> str:
        return f"/dev/video{self.target}" if self.target.isdigit() else self.target

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
        self.capture = capture
        if self.device:
            self._configure_device(capture)

    def _configure_device(self, capture: cv2.VideoCapture) -> None:
        # Ask for the camera's own MJPEG: forwarding it saves a decode and a re-encode.
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if self.size:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # no stale frames queued in the driver
        capture.set(cv2.CAP_PROP_MODE, 0)  # V4L2: raw control values, not 0..1
        self.ranges = {
            key: limits
            for key, (_, control_id) in V4L2_CONTROLS.items()
            if (limits := query_control(self.device_path, control_id)) is not None
        }
        self._choose_mode(capture)

    def _choose_mode(self, capture: cv2.VideoCapture) -> None:
        delivered = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))  # fmt: skip
        fourcc = fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
        self.delivered = delivered
        passthrough = not self.passthrough_refused and use_passthrough(
            self.fmt, self.size, delivered, fourcc
        )
        if passthrough != self.passthrough or passthrough:
            capture.set(cv2.CAP_PROP_CONVERT_RGB, 0 if passthrough else 1)
        self.passthrough = passthrough
        mode = "forwarding its MJPEG untouched" if self.passthrough else "decoding and encoding"
        log.info("%s: %dx%d %s, %s", self.description, *delivered, fourcc, mode)

    def reconfigure(self, size: tuple[int, int] | None, fps: float, fmt: str) -> None:
        resize = size != self.size
        refps = fps != self.fps
        self.size, self.fps, self.fmt = size, fps, fmt
        capture = self.capture
        if not self.device or capture is None:
            return  # a file or URL is resized in software; a closed device on open
        if refps:
            capture.set(cv2.CAP_PROP_FPS, fps)
        if resize and size is not None:
            # Setting the height after the width makes OpenCV restart the stream at the
            # new size on the open device: no reopen, a gap of a frame or two.
            resized = capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0]) and capture.set(
                cv2.CAP_PROP_FRAME_HEIGHT, size[1]
            )
            if not resized or not capture.isOpened():
                log.info("%s: reopening at %dx%d", self.description, *size)
                self.close()
                self.open()
                return
        self._choose_mode(capture)

    def set_controls(self, settings: Mapping[str, Any]) -> frozenset[str]:
        if not self.device or self.capture is None:
            return frozenset()
        applied: set[str] = set()
        for key in ("brightness", "contrast", "saturation", "sharpness"):
            limits = self.ranges.get(key)
            if limits is None or (settings[key] == 50 and key not in self.touched):
                continue  # a neutral control we never touched stays as the camera has it
            if self._set(key, device_value(settings[key], limits)):
                applied.add(key)
        # Exposure is one unit: manual exposure needs both controls, or software does it.
        auto, manual = self.ranges.get("auto_exposure"), self.ranges.get("exposure_time")
        if auto is not None and (not settings["auto_exposure"] or "auto_exposure" in self.touched):
            if settings["auto_exposure"]:
                on = auto.default if auto.default != V4L2_EXPOSURE_MANUAL else (
                    V4L2_EXPOSURE_APERTURE_PRIORITY)  # fmt: skip
                if self._set("auto_exposure", on):
                    applied.update(("auto_exposure", "exposure_time"))
            elif manual is not None and self._set("auto_exposure", V4L2_EXPOSURE_MANUAL):
                value = min(max(settings["exposure_time"], manual.lo), manual.hi)
                if self._set("exposure_time", value):
                    applied.update(("auto_exposure", "exposure_time"))
        for key in self.touched - applied:  # now in software: the camera back to its default
            if key in self.ranges and key != "exposure_time":
                self._set(key, self.ranges[key].default)
        return frozenset(applied)

    def _set(self, key: str, value: int) -> bool:
        assert self.capture is not None
        self.touched.add(key)
        ok = bool(self.capture.set(V4L2_CONTROLS[key][0], value))
        if not ok:
            log.info("%s: the driver refused %s=%d; applying it in software",
                     self.description, key, value)  # fmt: skip
        return ok

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
