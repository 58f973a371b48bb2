"""``camera-worker``: capture from one camera, encode, publish each frame to the broker.

One process per camera. It paces itself to the target fps and drops frames (and says
so) when capture or encoding cannot keep up, rather than falling behind. A source that
fails is reopened with exponential backoff, never in a tight loop. SIGINT and SIGTERM
stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
import time

import cv2
import zmq

from cameras import stamp, wire
from cameras.encoding import encode
from cameras.sources import Capture, Source, SourceError, make_source

log = logging.getLogger("camera-worker")

DROP_REPORT_INTERVAL = 5.0


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
    def __init__(self, args: argparse.Namespace, socket: zmq.Socket, source: Source) -> None:
        self.camera = args.camera_id
        self.fps = args.fps
        self.format = args.format
        self.quality = args.quality
        self.size = (args.width, args.height) if args.width and args.height else None
        self.socket = socket
        self.source = source
        self.seq = 0
        self.dropped = 0
        self.backoff = Backoff()

    def run(self, stop: Stop) -> None:
        while not stop.is_set():
            try:
                self.source.open()
                log.info("camera %s: capturing from %s", self.camera, self.source.description)
                self.stream(stop)
            except SourceError as exc:
                delay = self.backoff.next()
                log.error("camera %s: %s; retrying in %.0f s", self.camera, exc, delay)
                stop.wait(delay)
            finally:
                self.source.close()

    def stream(self, stop: Stop) -> None:
        interval = 1 / self.fps
        next_due = time.monotonic()
        reported_at, dropped_at_report, work = next_due, 0, 0.0
        while not stop.is_set():
            started = time.monotonic()
            self.publish(self.source.read())
            self.backoff.reset()
            now = time.monotonic()
            work = now - started
            next_due += interval
            missed = late_slots(now, next_due, interval)
            if missed:
                self.dropped += missed
                next_due += missed * interval
            if now - reported_at >= DROP_REPORT_INTERVAL:
                if self.dropped > dropped_at_report:
                    log.warning(
                        "camera %s: fell behind %g fps (the last frame took %.0f ms to "
                        "capture and encode); dropped %d frames in the last %.0f s",
                        self.camera, self.fps, work * 1000, self.dropped - dropped_at_report,
                        now - reported_at,
                    )  # fmt: skip
                reported_at, dropped_at_report = now, self.dropped
            stop.wait(max(0.0, next_due - time.monotonic()))

    def publish(self, capture: Capture) -> None:
        if capture.jpeg is not None:  # the camera's own MJPEG, untouched
            payload = capture.jpeg
            width, height = capture.jpeg_size
        else:
            image = capture.image
            assert image is not None
            if self.size and capture.size != self.size:
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
            height, width = image.shape[:2]
            payload = encode(image, self.format, self.quality)
            if self.format == "jpeg":  # lets any viewer measure latency (docs/protocol.md)
                payload = stamp.stamp(payload, self.seq, capture.captured_at)
        header = wire.FrameHeader(self.camera, self.seq, capture.captured_at, width, height,
                                  self.format)  # fmt: skip
        self.socket.send_multipart(wire.encode(header, payload), copy=False)
        self.seq += 1


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


def quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (args.width is None) != (args.height is None):
        parser().error("--width and --height go together")
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
    socket.setsockopt(zmq.SNDHWM, 4)  # drop stale frames here rather than queue them
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(args.broker)
    except zmq.ZMQError as exc:
        log.error("camera %s: bad --broker %s: %s", args.camera_id, args.broker, exc)
        stop.close()
        return 2
    log.info("camera %s: %s at %g fps as %s, publishing to %s", args.camera_id,
             source.description, args.fps, args.format, args.broker)  # fmt: skip
    try:
        Worker(args, socket, source).run(stop)
        log.info("camera %s: %s received, stopped", args.camera_id, stop.signal)
    finally:
        socket.close(linger=0)
        context.term()
        stop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
