"""``camera-worker``: capture from one camera, encode, publish each frame to the broker.

One process per camera. It paces itself to the target fps and drops frames (and says
so) when capture or encoding cannot keep up, rather than falling behind. A source that
fails is reopened with exponential backoff, never in a tight loop. SIGINT and SIGTERM
stop it cleanly.

With ``--control`` it also keeps a control channel to the broker (`cameras.link`): it
says hello, heartbeats, and runs commands between frames: settings change live, without
interrupting the stream; ``stop_stream`` releases the source. The loop waits for the next
frame with a `zmq.Poller` over the control socket and the `Stop` pipe, so a command is
handled within milliseconds and the frame pacing is kept.

A worker the broker starts must not outlive it. ``--lifeline FD`` is the read end of a
pipe whose write end only the broker holds: when the broker dies, however it dies, the
kernel closes that end, the pipe reads EOF, and the worker exits at once. With
``--orphan-timeout S`` it also exits after S seconds without a word from the broker on
the control channel (a broker that hangs, or one the lifeline cannot reach). A worker
started by hand has neither, and waits for its broker forever.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import signal
import stat
import sys
import time
from typing import Any

import cv2
import numpy as np
import zmq

from broker.protocol import stamp, wire
from broker.protocol.settings import (
    SETTINGS,
    Settings,
    SettingsError,
    defaults,
    supported,
    validate,
)
from cameras.adjust import IMAGE_SETTINGS, NEUTRAL, adjust, is_neutral
from cameras.encoding import encode
from cameras.link import ControlLink, keep_connection_fresh, open_dealer
from cameras.sources import Capture, Source, SourceError, make_source

log = logging.getLogger("camera-worker")

DROP_REPORT_INTERVAL = 5.0
SIZE_KEYS = ("width", "height")
Reply = tuple[bool, str, dict[str, Any]]  # success, message, extra reply fields


class Stop:
    """A stop request that a signal handler may set and that sleeps wake up for.

    Like `threading.Event`, but `set` takes no lock: ``Event.set`` from a handler can
    deadlock when the signal lands while the main thread holds the Event's internal lock
    inside ``wait``. Here ``set`` writes one byte to a pipe that is never drained, so
    once set, every later ``wait`` returns at once.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._set = False
        self.signal: str | None = None  # which signal asked, for the log

    def set(self) -> None:
        if not self._set:
            self._set = True
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self._set

    def fileno(self) -> int:
        """Readable once set: lets a poller wait on it with other sockets."""
        return self._read

    def wait(self, timeout: float) -> bool:
        if not self._set:
            select.select([self._read], [], [], max(0.0, timeout))
        return self._set

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class Backoff:
    def __init__(self, first: float = 1.0, limit: float = 30.0) -> None:
        self.first, self.limit, self.delay = first, limit, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.limit)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def late_slots(now: float, next_due: float, interval: float) -> int:
    """How many whole frame slots have passed since ``next_due``: frames we must drop."""
    return int((now - next_due) // interval) if now > next_due else 0


class Worker:
    """One camera: its source, its current settings, the frame loop and the commands.

    ``control`` is the DEALER socket of the control channel, or None for a worker that
    just streams (as before there was a control plane)."""

    def __init__(self, args: argparse.Namespace, socket: zmq.Socket, source: Source,
                 control: zmq.Socket | None = None) -> None:  # fmt: skip
        self.camera = args.camera_id
        self.socket = socket
        self.source = source
        # Every setting but width/height, which `output_size` knows.
        self.settings: Settings = {k: v for k, v in defaults().items() if k not in SIZE_KEYS}
        self.settings.update(fps=float(args.fps), format=args.format, quality=args.quality)
        self.size = (args.width, args.height) if args.width and args.height else None
        self.last_size: tuple[int, int] | None = None  # of the last frame published
        self.supported = supported()  # every source can apply every setting, in software
        self.software: Settings = dict(NEUTRAL)  # the image settings applied in software
        self.neutral = True  # `self.software` leaves images unchanged
        self.streaming = not args.paused
        self.opened = False
        self.retry_at = 0.0  # when to try opening a failed source again
        self.next_due = 0.0  # when the next frame is due
        self.seq = 0
        self.dropped = 0
        self.backoff = Backoff()
        self.reported_at, self.dropped_at_report = time.monotonic(), 0
        self.link: ControlLink | None = None
        if control is not None:
            self.link = ControlLink(control, args.heartbeat, self.hello, lambda: self.streaming)
        self.lifeline: int | None = args.lifeline  # read end of a pipe the broker holds
        self.orphan_timeout: float = args.orphan_timeout or 0.0  # 0: wait forever
        self.ended: str | None = None  # why the worker stopped on its own (its broker is gone)

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: Stop) -> None:
        """Until stopped by a signal, or until the broker is gone (then `ended` says why)."""
        poller = zmq.Poller()
        poller.register(stop, zmq.POLLIN)
        if self.lifeline is not None:
            poller.register(self.lifeline, zmq.POLLIN)
        if self.link is not None:
            poller.register(self.link.socket, zmq.POLLIN)
            self.link.start()
        try:
            while not stop.is_set():
                self.step()
                if self.ended is not None:
                    return
                timeout = max(0.0, self.wake_at() - time.monotonic())
                ready = dict(poller.poll(math.ceil(timeout * 1000)))
                if self.lifeline is not None and self.lifeline in ready:
                    self.check_lifeline()
                    if self.ended is not None:
                        return
                if self.link is not None and self.link.socket in ready:
                    for command in self.link.receive():
                        self.handle(command)
        finally:
            self.close_source()

    def check_lifeline(self) -> None:
        """The lifeline is readable: EOF means the broker that started us is gone."""
        assert self.lifeline is not None
        try:
            data = os.read(self.lifeline, 64)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            log.debug("camera %s: lifeline read failed: %s", self.camera, exc)
        if not data:  # the broker never writes: only its death makes this readable
            self.ended = "its broker is gone (the lifeline closed)"

    def check_orphaned(self) -> None:
        if self.link is None or not self.orphan_timeout:
            return
        silent = self.link.liveness.silent_for(self.link.clock())
        if silent > self.orphan_timeout:
            self.ended = (f"no word from its broker for {silent:.1f} s "
                          f"(orphan timeout {self.orphan_timeout:g} s)")  # fmt: skip

    def step(self) -> None:
        """Whatever is due now: a heartbeat, opening the source, a frame."""
        if self.link is not None:
            self.link.tick()
            self.check_orphaned()
            if self.ended is not None:
                return
        if not self.streaming:
            return
        if not self.opened and time.monotonic() >= self.retry_at:
            self.open_source()
        if self.opened and time.monotonic() >= self.next_due:
            self.capture()

    def wake_at(self) -> float:
        times = [self.link.next_due()] if self.link is not None else []
        if self.streaming:
            times.append(self.next_due if self.opened else self.retry_at)
        return min(times, default=time.monotonic() + 1.0)

    def open_source(self) -> str | None:
        """Open the source now; the error text if it failed (then retried with backoff)."""
        try:
            self.source.open()
        except SourceError as exc:
            self.source_failed(exc)
            return str(exc)
        self.opened = True
        log.info("camera %s: capturing from %s", self.camera, self.source.description)
        self.apply_controls()
        self.next_due = time.monotonic()
        return None

    def source_failed(self, exc: SourceError) -> None:
        self.close_source()
        delay = self.backoff.next()
        log.error("camera %s: %s; retrying in %.0f s", self.camera, exc, delay)
        self.retry_at = time.monotonic() + delay

    def close_source(self) -> None:
        self.source.close()
        self.opened = False

    def capture(self) -> None:
        """Capture, encode and publish one frame; keep the pacing, count late slots."""
        fps = self.settings["fps"]
        interval = 1 / fps
        started = time.monotonic()
        try:
            self.publish(self.source.read())
        except SourceError as exc:
            self.source_failed(exc)
            return
        self.backoff.reset()
        now = time.monotonic()
        self.next_due += interval
        missed = late_slots(now, self.next_due, interval)
        if missed:
            self.dropped += missed
            self.next_due += missed * interval
        if now - self.reported_at >= DROP_REPORT_INTERVAL:
            if self.dropped > self.dropped_at_report:
                log.warning(
                    "camera %s: fell behind %g fps (the last frame took %.0f ms to "
                    "capture and encode); dropped %d frames in the last %.0f s",
                    self.camera, fps, (now - started) * 1000,
                    self.dropped - self.dropped_at_report, now - self.reported_at,
                )  # fmt: skip
            self.reported_at, self.dropped_at_report = now, self.dropped

    def publish(self, capture: Capture) -> None:
        fmt = self.settings["format"]
        image = capture.image
        if capture.jpeg is not None:
            if fmt == "jpeg" and self.neutral and self.size in (None, capture.jpeg_size):
                self.send(capture.captured_at, *capture.jpeg_size, capture.jpeg)  # untouched
                return
            # Settings the camera's JPEG does not have yet: decode it and go on as usual.
            image = cv2.imdecode(np.frombuffer(capture.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{self.source.description}: an undecodable MJPEG frame")
        assert image is not None
        if self.size and (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        if not self.neutral:
            image = adjust(image, self.software)
        height, width = image.shape[:2]
        payload = encode(image, fmt, self.settings["quality"])
        if fmt == "jpeg":  # lets any viewer measure latency (docs/protocol.md)
            payload = stamp.stamp(payload, self.seq, capture.captured_at)
        self.send(capture.captured_at, width, height, payload)

    def send(self, captured_at: float, width: int, height: int, payload: bytes) -> None:
        header = wire.FrameHeader(self.camera, self.seq, captured_at, width, height,
                                  self.settings["format"])  # fmt: skip
        # copy=True: for a frame of ~100 KB, cheaper than the zero-copy bookkeeping.
        self.socket.send_multipart(wire.encode(header, payload), copy=True)
        self.last_size = (width, height)
        self.seq += 1

    # -- settings -------------------------------------------------------------------

    def output_size(self) -> tuple[int, int] | None:
        return self.size or self.source.size or self.last_size

    def current_settings(self) -> Settings:
        """Every setting; width and height only once known (a file's size, say, is known
        from its first frame)."""
        size = self.output_size()
        known = dict(zip(SIZE_KEYS, size, strict=True)) if size else {}
        return {key: known[key] if key in SIZE_KEYS else self.settings[key]
                for key in SETTINGS if key in known or key in self.settings}  # fmt: skip

    def apply(self, changed: Settings) -> str | None:
        """Apply validated changes live; the error text if the source failed meanwhile."""
        self.settings.update({k: v for k, v in changed.items() if k not in SIZE_KEYS})
        if changed.keys() & set(SIZE_KEYS):
            size = self.output_size() or (0, 0)  # known, or both are in `changed`
            self.size = (changed.get("width", size[0]), changed.get("height", size[1]))
        if "fps" in changed:  # a slower rate must not wait out the old, longer interval
            self.next_due = min(self.next_due, time.monotonic() + 1 / changed["fps"])
        if changed.keys() & {"width", "height", "fps", "format"}:
            try:
                self.source.reconfigure(self.size, self.settings["fps"], self.settings["format"])
            except SourceError as exc:
                self.source_failed(exc)
                return str(exc)
            self.apply_controls()  # a device may have been reopened
        elif changed.keys() & set(IMAGE_SETTINGS):
            self.apply_controls()
        return None

    def apply_controls(self) -> None:
        """Image settings: in hardware where the source can, the rest in software."""
        image = {key: self.settings[key] for key in IMAGE_SETTINGS}
        hardware = self.source.set_controls(image) if self.opened else frozenset()
        self.software = {k: NEUTRAL[k] if k in hardware else v for k, v in image.items()}
        self.neutral = is_neutral(self.software)

    # -- the control channel --------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        return {"camera": self.camera, "device": self.source.description,
                "supported": self.supported, "settings": self.current_settings(),
                "streaming": self.streaming, "pid": os.getpid()}  # fmt: skip

    def handle(self, command: dict[str, Any]) -> None:
        """Run one command and send its one reply."""
        assert self.link is not None
        name = command["command"]
        if "error" in command:
            success, message, extra = False, command["error"], {}
        else:
            try:
                success, message, extra = getattr(self, f"do_{name}")(command["settings"])
            except Exception as exc:  # a bug must cost one command, not the camera
                log.exception("camera %s: %s failed", self.camera, name)
                success, message, extra = False, f"internal error: {exc!r}", {}
        level = logging.DEBUG if name == "get_status" else logging.INFO
        log.log(level, "camera %s: %s: %s", self.camera, name or "command", message)
        self.link.reply(command["request_id"], success, message, self.current_settings(),
                        self.streaming, **extra)  # fmt: skip

    def do_update_settings(self, changes: Settings) -> Reply:
        try:
            clean = validate(changes, self.supported)
            if ("width" in clean) != ("height" in clean):
                size = self.output_size()
                if size is None:
                    missing = "height" if "width" in clean else "width"
                    raise SettingsError({missing: "not known before the first frame: "
                                                  "give width and height together"})  # fmt: skip
                clean = {**dict(zip(SIZE_KEYS, size, strict=True)), **clean}
        except SettingsError as exc:
            return False, f"invalid settings, nothing changed: {exc}", {"errors": exc.errors}
        current = self.current_settings()
        changed = {key: value for key, value in clean.items() if current.get(key) != value}
        if not changed:
            return True, "no change", {}
        error = self.apply(changed)
        message = "changed " + ", ".join(changed)
        return True, message + (f"; the source failed: {error}" if error else ""), {}

    def do_start_stream(self, _settings: Settings) -> Reply:
        if self.streaming:
            return True, "already streaming", {}
        self.streaming = True
        self.backoff.reset()
        error = self.open_source()
        if error:
            return False, f"cannot open the source: {error}; retrying", {}
        return True, "streaming", {}

    def do_stop_stream(self, _settings: Settings) -> Reply:
        if not self.streaming:
            return True, "already stopped", {}
        self.streaming = False
        self.close_source()  # a device's LED goes off
        return True, "stopped", {}

    def do_get_status(self, _settings: Settings) -> Reply:
        if not self.streaming:
            state = "stopped"
        elif self.opened:
            state = "streaming"
        else:
            state = f"streaming, but the source failed; retrying in {self.retry_wait():.0f} s"
        return True, f"{state}; {self.seq} frames published, {self.dropped} dropped", {}

    def do_restart_camera(self, _settings: Settings) -> Reply:
        self.close_source()
        if not self.streaming:
            return True, "not streaming: the source opens on start_stream", {}
        self.backoff.reset()
        error = self.open_source()
        if error:
            return False, f"cannot reopen the source: {error}; retrying", {}
        return True, "restarted", {}

    def retry_wait(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camera-worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, metavar="ENDPOINT",
                   help="the broker's ZeroMQ ingest endpoint, e.g. tcp://host:5555")  # fmt: skip
    p.add_argument("--camera-id", required=True, type=camera_id)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="V4L2 device, e.g. /dev/video0")
    where.add_argument("--source", help="test-pattern, a video file, an image folder, or a URL")
    p.add_argument("--width", type=positive_int, help="frame width (default: the source's)")
    p.add_argument("--height", type=positive_int, help="frame height (default: the source's)")
    p.add_argument("--fps", type=positive_float, default=15.0)
    p.add_argument("--format", choices=wire.FORMATS, default="jpeg")
    p.add_argument("--quality", type=quality, default=80, help="1..100 (default 80)")
    p.add_argument("--control", metavar="ENDPOINT",
                   help="the broker's control endpoint (ROUTER), e.g. tcp://host:5556; "
                        "without it the worker only streams")  # fmt: skip
    p.add_argument("--heartbeat", type=heartbeat, default=1.0, metavar="SECONDS",
                   help="control heartbeat interval (default 1.0)")  # fmt: skip
    p.add_argument("--paused", action="store_true",
                   help="start with streaming off (source closed) until start_stream")  # fmt: skip
    p.add_argument("--lifeline", type=lifeline, metavar="FD",
                   help="read end of a pipe the broker holds open: exit when it closes "
                        "(set by the broker for the workers it starts)")  # fmt: skip
    p.add_argument("--orphan-timeout", type=orphan_timeout, metavar="SECONDS",
                   help="exit after this long without a word from the broker on the "
                        "control channel (needs --control; default: wait forever)")  # fmt: skip
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def camera_id(text: str) -> str:
    if not wire.CAMERA_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must match {wire.CAMERA_ID.pattern}, got {text!r}")
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= wire.MAX_DIMENSION:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {wire.MAX_DIMENSION}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 240:
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 240, got {text}")
    return value


def heartbeat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be a number from 0.05 to 60, got {text}")
    return value


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
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 86400, got {text}")
    return value


def quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (args.width is None) != (args.height is None):
        parser().error("--width and --height go together")
    if args.paused and not args.control:
        parser().error("--paused needs --control (nothing else could start the stream)")
    if args.orphan_timeout and not args.control:
        parser().error("--orphan-timeout needs --control (the broker is heard there)")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")  # fmt: skip
    stop = Stop()

    def on_signal(signum: int, _frame: object) -> None:
        # No logging here: a handler must not take locks the interrupted code may hold.
        stop.signal = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    size = (args.width, args.height) if args.width else None
    source = make_source(args.source, args.device, size, args.fps, args.format)
    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    control = None
    try:
        socket.setsockopt(zmq.SNDHWM, 4)  # drop stale frames here rather than queue them
        socket.setsockopt(zmq.LINGER, 0)
        keep_connection_fresh(socket, args.heartbeat)  # a partition's backlog is dropped
        try:
            socket.connect(args.broker)
        except zmq.ZMQError as exc:
            log.error("camera %s: bad --broker %s: %s", args.camera_id, args.broker, exc)
            return 2
        if args.control:
            try:
                control = open_dealer(context, args.control, args.camera_id, args.heartbeat)
            except zmq.ZMQError as exc:
                log.error("camera %s: bad --control %s: %s", args.camera_id, args.control, exc)
                return 2
        controlled = f", control at {args.control}" if args.control else ""
        log.info("camera %s: %s at %g fps as %s, publishing to %s%s%s", args.camera_id,
                 source.description, args.fps, args.format, args.broker, controlled,
                 " (paused)" if args.paused else "")  # fmt: skip
        worker = Worker(args, socket, source, control)
        worker.run(stop)
        if worker.ended is not None:
            log.warning("camera %s: %s; exiting", args.camera_id, worker.ended)
        else:
            log.info("camera %s: %s received, stopped", args.camera_id, stop.signal)
    finally:
        if control is not None:
            control.close(linger=0)
        socket.close(linger=0)
        context.term()
        stop.close()
    return 0

if __name__ == "__main__":
    sys.exit(main())
