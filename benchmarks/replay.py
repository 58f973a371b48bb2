"""A cheap synthetic camera for benchmarks: publishes a loop of pre-encoded JPEGs.

It encodes ``--frames`` test-pattern images once, each stamped (docs/protocol.md),
then publishes them round and round at ``--fps``, rewriting only the fixed-width stamp
in place, so the load generator spends almost no CPU. Same wire format and socket
options as ``camera-worker``. When late it skips frame slots (like the worker); ``seq``
still grows by one per published frame, so a gap seen by a viewer is a drop downstream.

Commands on stdin, one a line: ``start`` begins counting, ``stop`` prints a JSON summary
of the counted window on stdout; end of input (or SIGTERM) exits.

    python -m benchmarks.replay --broker ipc:///tmp/x/bench.ipc --camera cam0 --fps 15
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq

from broker.protocol import stamp, wire


@dataclass
class Frame:
    data: bytearray
    at: int  # offset of the stamp text


@dataclass
class Counters:
    published: int = 0
    skipped_slots: int = 0
    started: float = 0.0
    counting: bool = False

    def summary(self) -> dict[str, object]:
        seconds = time.monotonic() - self.started if self.counting else 0.0
        return {
            "published": self.published,
            "skipped_slots": self.skipped_slots,
            "seconds": round(seconds, 3),
            "fps": round(self.published / seconds, 3) if seconds else None,
        }


def prepare(width: int, height: int, quality: int, count: int, image: str = "") -> list[Frame]:
    from cameras.encoding import encode  # OpenCV: only needed once, before the loop
    from cameras.sources.testpattern import TestPattern

    pattern, now, frames = TestPattern(width, height), time.time(), []
    photo = letterboxed(image, width, height) if image else None
    for i in range(count):
        picture = photo if photo is not None else pattern.draw(i, now)
        data = bytearray(stamp.stamp(encode(picture, "jpeg", quality), i, now))
        frames.append(Frame(data, stamp.find(data)))
    return frames


def letterboxed(path: str, width: int, height: int) -> Any:
    """The image at ``path`` scaled to fit ``width`` x ``height``, centred on grey."""
    import cv2
    import numpy as np

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read the image {path}")
    scale = min(width / image.shape[1], height / image.shape[0])
    w, h = int(image.shape[1] * scale), int(image.shape[0] * scale)
    canvas = np.full((height, width, 3), 128, np.uint8)
    x, y = (width - w) // 2, (height - h) // 2
    canvas[y : y + h, x : x + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return canvas


class Commands:
    """``start`` / ``stop`` lines on stdin (read unbuffered, so select sees every line)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.pending = b""

    def read(self) -> bool:
        """Handle what stdin holds; False once it is closed."""
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            return False
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.handle(line.strip().decode())
        return True

    def handle(self, command: str) -> None:
        counters = self.counters
        if command == "start":
            counters.published = counters.skipped_slots = 0
            counters.started, counters.counting = time.monotonic(), True
        elif command == "stop":
            print(json.dumps(counters.summary()), flush=True)
            counters.counting = False


def run(args: argparse.Namespace, sock: zmq.Socket, frames: list[Frame]) -> None:
    counters, interval, seq = Counters(), 1 / args.fps, 0
    next_due = time.monotonic()
    commands = Commands(counters)
    while True:
        frame, now = frames[seq % len(frames)], time.time()
        stamp.restamp(frame.data, seq, now, frame.at)
        header = wire.FrameHeader(args.camera, seq, now, args.width, args.height, "jpeg")
        # copy=True: the bytearray is rewritten on the next loop while zmq may still hold it
        sock.send_multipart(wire.encode(header, frame.data))
        seq += 1
        counters.published += 1
        next_due += interval
        late = time.monotonic() - next_due
        if late > interval:
            skipped = int(late // interval)
            counters.skipped_slots += skipped
            next_due += skipped * interval
        while (wait := next_due - time.monotonic()) > 0:
            ready, _, _ = select.select([sys.stdin], [], [], wait)
            if ready and not commands.read():
                return


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__)
    p.add_argument("--broker", required=True, metavar="ENDPOINT")
    p.add_argument("--camera", required=True)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--frames", type=int, default=30, help="distinct frames in the loop")
    p.add_argument("--image", default="", help="publish this photo instead of the test pattern")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    frames = prepare(args.width, args.height, args.quality, args.frames, args.image)
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 4)  # as camera-worker: drop stale frames here
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.broker)
    size = sum(len(f.data) for f in frames) // len(frames)
    print(json.dumps({"ready": True, "mean_frame_bytes": size}), flush=True)
    try:
        run(args, sock, frames)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(linger=0)
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
