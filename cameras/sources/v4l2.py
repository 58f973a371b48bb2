"""A V4L2 camera device through ``cv2.VideoCapture``: asks for the camera's own MJPEG
and forwards it untouched when it is exactly what was asked (no decode, no re-encode),
changes size and fps on the open device, and maps image settings onto the device's
controls, whose ranges it asks the driver for (``VIDIOC_QUERYCTRL``).

OpenCV passes ``CAP_PROP_BRIGHTNESS`` & co. to the driver as raw values (with
``CAP_PROP_MODE`` 0) but cannot tell their range, hence the ioctl. Not tested on real
hardware: the test machine has no camera.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2

from cameras.sources import Capture, Size, SourceError
from cameras.sources.capture import CaptureSource

log = logging.getLogger("camera-worker")

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


def use_passthrough(fmt: str, requested: Size | None, delivered: Size, fourcc: str) -> bool:
    """Forward the camera's MJPEG bytes untouched? Only when they are exactly what was asked."""
    return fmt == "jpeg" and fourcc == "MJPG" and (requested is None or requested == delivered)


def fourcc_name(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))


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


class V4L2Source(CaptureSource):
    """``target``: a device path (/dev/video0) or index (0)."""

    def __init__(self, target: str, *, size: Size | None, fps: float, fmt: str) -> None:
        super().__init__(target, size=size, fps=fps, fmt=fmt)
        self.is_file = False  # a device never ends: a failed read is a failure
        self.description = f"device {target}"
        self.passthrough = False
        self.passthrough_refused = False  # the driver once gave non-JPEG bytes: decode
        self.delivered = (0, 0)
        self.ranges: dict[str, ControlRange] = {}  # the device's controls we can map onto
        self.touched: set[str] = set()  # controls we have set: reset to default when neutral

    @property
    def device_path(self) -> str:
        return f"/dev/video{self.target}" if self.target.isdigit() else self.target

    def open_capture(self) -> cv2.VideoCapture:
        index: int | str = int(self.target) if self.target.isdigit() else self.target
        return cv2.VideoCapture(index, cv2.CAP_V4L2)

    def open(self) -> None:
        super().open()
        assert self.capture is not None
        self._configure(self.capture)

    def _configure(self, capture: cv2.VideoCapture) -> None:
        # Ask for the camera's own MJPEG: forwarding it saves a decode and a re-encode.
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
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
        delivered = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
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

    def reconfigure(self, size: Size | None, fps: float, fmt: str) -> None:
        resize = size != self.size
        refps = fps != self.fps
        self.size, self.fps, self.fmt = size, fps, fmt
        capture = self.capture
        if capture is None:
            return  # closed: applied on open
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
        if self.capture is None:
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
                on = (
                    auto.default
                    if auto.default != V4L2_EXPOSURE_MANUAL
                    else (V4L2_EXPOSURE_APERTURE_PRIORITY)
                )
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
            log.info(
                "%s: the driver refused %s=%d; applying it in software",
                self.description,
                key,
                value,
            )
        return ok

    def read(self) -> Capture:
        now, frame = self.grab()
        if self.passthrough:
            jpeg = frame.tobytes()
            if not jpeg.startswith(b"\xff\xd8"):  # CONVERT_RGB=0 gave raw pixels instead
                self.passthrough_refused = True
                raise SourceError(f"{self.description}: MJPEG passthrough gave no JPEG; decoding")
            return Capture(now, jpeg=jpeg, jpeg_size=self.delivered)
        return Capture(now, frame)
