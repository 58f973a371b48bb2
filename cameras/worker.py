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

Here: the loop (`Worker`, `Stop`, pacing) and `main`; the commands are in
`cameras.commands`, the command line in `cameras.cli`, the sources in `cameras.sources`.
Kept whole past 400 lines: one loop whose pacing, liveness and source recovery decide
together what happens to each frame.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import zmq

from broker.protocol import stamp, wire
from broker.protocol.settings import BROKER_KEYS, SETTINGS, Settings, defaults, worker_supported
from broker.support.backoff import Backoff
from cameras import cli, commands
from cameras.adjust import IMAGE_SETTINGS, NEUTRAL, adjust, is_neutral
from cameras.cli import WorkerOptions
from cameras.commands import SIZE_KEYS
from cameras.encoding import encode
from cameras.link import (
    ControlLink,
    KeyFileProblem,
    curve_client,
    keep_connection_fresh,
    open_dealer,
)
from cameras.sources import Capture, Size, Source, SourceError, make_source

log = logging.getLogger("camera-worker")

DROP_REPORT_INTERVAL = 5.0
ZERO_COPY_BYTES = 1024 * 1024  # larger payloads are sent without a copy
SEND_HWM = 4  # frames queued for a slow broker: drop stale frames here rather than queue


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


def late_slots(now: float, next_due: float, interval: float) -> int:
    """How many whole frame slots have passed since ``next_due``: frames we must drop."""
    return int((now - next_due) // interval) if now > next_due else 0


class Worker:
    """One camera: its source, its current settings, the frame loop; its commands are in
    `cameras.commands`.

    ``socket`` is the PUB socket frames go out on; ``control`` the DEALER socket of the
    control channel, or None for a worker that just streams."""

    def __init__(
        self,
        options: WorkerOptions,
        socket: zmq.Socket[bytes],
        source: Source,
        control: zmq.Socket[bytes] | None = None,
    ) -> None:
        self.camera = options.camera_id
        self.socket = socket
        self.source = source
        # Every setting but width/height, which `output_size` knows.
        self.settings: Settings = {
            k: v for k, v in defaults().items() if k not in SIZE_KEYS and k not in BROKER_KEYS
        }
        self.settings.update(fps=float(options.fps), format=options.format, quality=options.quality)
        self.size: Size | None = options.size
        self.tiff_depth = options.tiff_depth
        self.last_size: Size | None = None  # of the last frame published
        self.supported = worker_supported()  # every source can apply every setting, in software
        self.software: Settings = dict(NEUTRAL)  # the image settings applied in software
        self.neutral = True  # `self.software` leaves images unchanged
        self.streaming = not options.paused
        self.opened = False
        self.retry_at = 0.0  # when to try opening a failed source again
        self.next_due = 0.0  # when the next frame is due
        self.seq = 0
        self.dropped = 0
        self.backoff = Backoff()
        self.reported_at, self.dropped_at_report = time.monotonic(), 0
        self.link: ControlLink | None = None
        if control is not None:
            self.link = ControlLink(control, options.heartbeat, self.hello, lambda: self.streaming)
        self.lifeline = options.lifeline  # read end of a pipe the broker holds
        self.orphan_timeout = options.orphan_timeout  # 0: wait forever
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
            self.ended = (
                f"no word from its broker for {silent:.1f} s "
                f"(orphan timeout {self.orphan_timeout:g} s)"
            )

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
                    self.camera,
                    fps,
                    (now - started) * 1000,
                    self.dropped - self.dropped_at_report,
                    now - self.reported_at,
                )
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
        payload = encode(image, fmt, self.settings["quality"], self.tiff_depth)
        if fmt == "jpeg":  # lets any viewer measure latency (docs/protocol.md)
            payload = stamp.stamp(payload, self.seq, capture.captured_at)
        self.send(capture.captured_at, width, height, payload)

    def send(self, captured_at: float, width: int, height: int, payload: bytes) -> None:
        header = wire.FrameHeader(
            self.camera, self.seq, captured_at, width, height, self.settings["format"]
        )
        # copy=True: for a frame of ~100 KB, cheaper than the zero-copy bookkeeping; a
        # raw 4K frame (17-25 MB) is handed over as it is.
        copy = len(payload) < ZERO_COPY_BYTES
        self.socket.send_multipart(wire.encode(header, payload), copy=copy)
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
        return {
            key: known[key] if key in SIZE_KEYS else self.settings[key]
            for key in SETTINGS
            if key in known or key in self.settings
        }

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
        return {
            "camera": self.camera,
            "device": self.source.description,
            "supported": self.supported,
            "settings": self.current_settings(),
            "streaming": self.streaming,
            "pid": os.getpid(),
        }

    def handle(self, command: Mapping[str, Any]) -> None:
        """Run one command and send its one reply."""
        assert self.link is not None
        success, message, extra = commands.run(self, command)
        name = command["command"]
        level = logging.DEBUG if name == "get_status" else logging.INFO
        log.log(level, "camera %s: %s: %s", self.camera, name or "command", message)
        self.link.reply(
            command["request_id"],
            success,
            message,
            self.current_settings(),
            self.streaming,
            **extra,
        )

    def retry_wait(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())


def main(argv: Sequence[str] | None = None) -> int:
    options = cli.parse(argv)
    logging.basicConfig(
        level=options.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    stop = Stop()

    def on_signal(signum: int, _frame: object) -> None:
        # No logging here: a handler must not take locks the interrupted code may hold.
        stop.signal = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return serve(options, stop)
    finally:
        stop.close()


def serve(options: WorkerOptions, stop: Stop) -> int:
    """Open the sockets, run the worker until ``stop`` or until its broker is gone, close
    them; the exit status (2: a bad endpoint)."""
    camera = options.camera_id
    source = make_source(options.source, options.device, options.size, options.fps, options.format)
    curve = None
    if options.broker_key is not None and options.key is not None:
        try:
            curve = curve_client(options.broker_key, options.key)
        except KeyFileProblem as exc:
            log.error("camera %s: %s", camera, exc)
            return 2
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket: zmq.Socket[bytes] = context.socket(zmq.PUB)
    control = None
    try:
        for option, value in (curve or {}).items():
            socket.setsockopt(option, value)
        socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        socket.setsockopt(zmq.LINGER, 0)
        keep_connection_fresh(socket, options.heartbeat)  # a partition's backlog is dropped
        try:
            socket.connect(options.broker)
        except zmq.ZMQError as exc:
            log.error("camera %s: bad --broker %s: %s", camera, options.broker, exc)
            return 2
        if options.control:
            try:
                control = open_dealer(context, options.control, camera, options.heartbeat, curve)
            except zmq.ZMQError as exc:
                log.error("camera %s: bad --control %s: %s", camera, options.control, exc)
                return 2
        controlled = f", control at {options.control}" if options.control else ""
        log.info(
            "camera %s: %s at %g fps as %s, publishing to %s%s%s",
            camera,
            source.description,
            options.fps,
            options.format,
            options.broker,
            controlled,
            " (paused)" if options.paused else "",
        )
        if curve is not None:
            log.info("camera %s: both links use CURVE with the key %s", camera, options.key)
        worker = Worker(options, socket, source, control)
        worker.run(stop)
        if worker.ended is not None:
            log.warning("camera %s: %s; exiting", camera, worker.ended)
        else:
            log.info("camera %s: %s received, stopped", camera, stop.signal)
    finally:
        if control is not None:
            control.close(linger=0)
        socket.close(linger=0)
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
