"""The ``camera-worker`` command line: its flags, checked, into a `WorkerOptions`.

Camera values (width, height, fps, format, quality) take their ranges and their error
phrasing from the one settings table, `broker.protocol.settings.SETTINGS`, which the
broker's config and the live validation of a change read too; the heartbeat takes its
range from `broker.protocol.control.HEARTBEAT_RANGE`, as the broker's config does. So a
worker started by hand accepts exactly the settings it will later report and be asked
to change.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.protocol import wire
from broker.protocol.control import HEARTBEAT_RANGE
from broker.protocol.settings import SETTINGS, SettingsError, validate, want

DESCRIPTION = (
    "``camera-worker``: capture from one camera, encode, publish each frame to the broker."
)
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_ORPHAN_TIMEOUT = 86400.0
TIFF_DEPTHS = (8, 16)  # --tiff-depth: 8-bit RGB or 16-bit greyscale
CAMERA_SETTINGS = ("width", "height", "fps", "format", "quality")  # what flags may set


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What one worker runs with. `parse` builds it from the command line; built in
    code, it is checked the same way (`ValueError` naming what is wrong)."""

    broker: str  # the broker's ZeroMQ ingest endpoint
    camera_id: str
    source: str | None = None  # test-pattern, a video file, an image folder or a URL
    device: str | None = None  # a V4L2 device; exactly one of source and device
    size: tuple[int, int] | None = None  # width, height; None: the source's own
    fps: float = SETTINGS["fps"].default
    format: str = SETTINGS["format"].default
    quality: int = SETTINGS["quality"].default
    tiff_depth: int = 8  # bits of a TIFF: 8 (RGB) or 16 (greyscale)
    control: str | None = None  # the broker's control endpoint; None: only stream
    heartbeat: float = 1.0  # seconds between control heartbeats
    paused: bool = False  # streaming off until the broker sends start_stream
    lifeline: int | None = None  # read end of a pipe only the broker holds open
    orphan_timeout: float = 0.0  # exit after this long without the broker; 0: never
    log_level: str = "info"
    broker_key: str | None = None  # the broker's public key file (CURVE)
    key: str | None = None  # this camera's secret key file (CURVE); with broker_key

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def camera_settings(self) -> dict[str, Any]:
        """The options that are camera settings, as `SETTINGS` names them."""
        size = dict(zip(("width", "height"), self.size, strict=True)) if self.size else {}
        return {**size, "fps": self.fps, "format": self.format, "quality": self.quality}

    def problem(self) -> str | None:
        """What is wrong with these options, in the command line's terms, or None."""
        if not wire.CAMERA_ID.fullmatch(self.camera_id):
            return f"--camera-id must match {wire.CAMERA_ID.pattern}, got {self.camera_id!r}"
        if (self.source is None) == (self.device is None):
            return "one of --source and --device is needed, and only one"
        try:
            validate(self.camera_settings())
        except SettingsError as exc:
            return "; ".join(f"--{key}: {error}" for key, error in exc.errors.items())
        if self.tiff_depth not in TIFF_DEPTHS:
            return f"--tiff-depth: must be 8 or 16, got {self.tiff_depth}"
        lo, hi = HEARTBEAT_RANGE
        if not lo <= self.heartbeat <= hi:
            return f"--heartbeat: must be {want(float, lo, hi)}, got {self.heartbeat:g}"
        if not 0 <= self.orphan_timeout <= MAX_ORPHAN_TIMEOUT:
            return f"--orphan-timeout: must be from 0 to {MAX_ORPHAN_TIMEOUT:g}"
        if self.paused and not self.control:
            return "--paused needs --control (nothing else could start the stream)"
        if self.orphan_timeout and not self.control:
            return "--orphan-timeout needs --control (the broker is heard there)"
        if (self.broker_key is None) != (self.key is None):
            return "--broker-key and --key go together (CURVE needs both)"
        return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camera-worker", description=DESCRIPTION)
    p.add_argument(
        "--broker",
        required=True,
        metavar="ENDPOINT",
        help="the broker's ZeroMQ ingest endpoint, e.g. tcp://host:5555",
    )
    p.add_argument("--camera-id", required=True, type=camera_id)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--device", help="V4L2 device, e.g. /dev/video0, or a camera index (0: the first)"
    )
    where.add_argument("--source", help="test-pattern, a video file, an image folder, or a URL")
    width, height, fps, quality = (SETTINGS[k] for k in ("width", "height", "fps", "quality"))
    p.add_argument(
        "--width",
        type=setting("width"),
        help=f"frame width, {width.lo:g}..{width.hi:g} (default: the source's)",
    )
    p.add_argument(
        "--height",
        type=setting("height"),
        help=f"frame height, {height.lo:g}..{height.hi:g} (default: the source's)",
    )
    p.add_argument(
        "--fps",
        type=setting("fps"),
        default=fps.default,
        help=f"{want(float, fps.lo, fps.hi)} (default {fps.default:g})",
    )
    p.add_argument(
        "--format", choices=SETTINGS["format"].choices, default=SETTINGS["format"].default
    )
    p.add_argument(
        "--quality",
        type=setting("quality"),
        default=quality.default,
        help=f"{quality.lo:g}..{quality.hi:g} (default {quality.default})",
    )
    p.add_argument(
        "--tiff-depth",
        type=int,
        choices=TIFF_DEPTHS,
        default=8,
        help="with --format tiff: 8 = 8-bit RGB (default), 16 = 16-bit greyscale",
    )
    p.add_argument(
        "--control",
        metavar="ENDPOINT",
        help="the broker's control endpoint (ROUTER), e.g. tcp://host:5556; "
        "without it the worker only streams",
    )
    p.add_argument(
        "--heartbeat",
        type=bounded(*HEARTBEAT_RANGE),
        default=1.0,
        metavar="SECONDS",
        help="control heartbeat interval (default 1.0)",
    )
    p.add_argument(
        "--paused",
        action="store_true",
        help="start with streaming off (source closed) until start_stream",
    )
    p.add_argument(
        "--lifeline",
        type=lifeline,
        metavar="FD",
        help="read end of a pipe the broker holds open: exit when it closes "
        "(set by the broker for the workers it starts)",
    )
    p.add_argument(
        "--orphan-timeout",
        type=orphan_timeout,
        metavar="SECONDS",
        help="exit after this long without a word from the broker on the "
        "control channel (needs --control; default: wait forever)",
    )
    p.add_argument(
        "--broker-key",
        metavar="FILE",
        help="the broker's public key (broker.key from `broker keys init`): encrypt and "
        "authenticate both links with CURVE; needs --key",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="this camera's secret key (cameras/ID.key_secret from `broker keys add ID`)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return p


def parse(argv: Sequence[str] | None = None) -> WorkerOptions:
    """The options of this command line; on a bad one, argparse's usage error (exit 2)."""
    p = parser()
    args = p.parse_args(argv)
    if (args.width is None) != (args.height is None):
        p.error("--width and --height go together")
    try:
        return WorkerOptions(
            broker=args.broker,
            camera_id=args.camera_id,
            source=args.source,
            device=args.device,
            size=(args.width, args.height) if args.width else None,
            fps=args.fps,
            format=args.format,
            quality=args.quality,
            tiff_depth=args.tiff_depth,
            control=args.control,
            heartbeat=args.heartbeat,
            paused=args.paused,
            lifeline=args.lifeline,
            orphan_timeout=args.orphan_timeout or 0.0,
            log_level=args.log_level,
            broker_key=args.broker_key,
            key=args.key,
        )
    except ValueError as exc:
        p.error(str(exc))


# -- argparse types: text to a checked value, or ArgumentTypeError saying what is wrong --


def setting(name: str) -> Callable[[str], Any]:
    """The type of the camera setting ``name``: its kind and range from `SETTINGS`."""
    spec = SETTINGS[name]
    message = f"must be {want(spec.kind, spec.lo, spec.hi, spec.choices)}, got {{}}"

    def convert(text: str) -> Any:
        try:
            return validate({name: spec.kind(text)})[name]
        except (ValueError, SettingsError):  # SettingsError is a ValueError: both say it
            raise argparse.ArgumentTypeError(message.format(text)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def bounded(lo: float, hi: float) -> Callable[[str], float]:
    """A number type from ``lo`` to ``hi``, inclusive."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:  # NaN is never within
            raise argparse.ArgumentTypeError(f"must be {want(float, lo, hi)}, got {text}")
        return value

    convert.__name__ = "number"
    return convert


def camera_id(text: str) -> str:
    if not wire.CAMERA_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must match {wire.CAMERA_ID.pattern}, got {text!r}")
    return text


def lifeline(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a file descriptor number, got {text!r}")
    fd = int(text)
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{fd} is not an open file descriptor ({exc})") from None
    if not stat.S_ISFIFO(mode):
        raise argparse.ArgumentTypeError(f"{fd} is not a pipe")
    return fd


def orphan_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_ORPHAN_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be a number above 0 and at most {MAX_ORPHAN_TIMEOUT:g}, got {text}"
        )
    return value
