"""camera-analyzer: motion, face and person detection on the broker's frames.

The broker starts it (``[analytics] enabled``), restarts it when it exits or goes
silent, and stops it at shutdown. It subscribes to the broker's frame feed (PUB, the
ingest message of `broker.protocol.wire`) for the cameras the broker's ``config``
message names, and talks to the broker over a DEALER (`broker.protocol.analysis`).

Per camera, newest wins: every loop drains what the feed delivered, keeping only the
newest frame of each camera, and analyses a camera's newest frame at most ``--fps``
times a second. A slow detector therefore skips frames (counted) and never builds a
backlog. JPEG frames are decoded at a reduced size (libjpeg's DCT scaling) when that
still gives ``--width`` pixels, then downscaled to ``--width``.

It exits when the broker is gone: the ``--lifeline`` pipe closes, or nothing was heard
for ``--orphan-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import cv2
import numpy as np
import zmq

from broker.protocol import analysis, wire
from cameras.analysis.detectors import Faces, Found, Motion, Onnx, People

log = logging.getLogger("camera-analyzer")

FEED_HWM = 64  # feed messages buffered at most; drained every loop anyway
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass
class Watched:
    """One camera the broker asked us to analyse."""

    model: str
    confidence: float
    newest: tuple[wire.FrameHeader, Any] | None = None  # not yet analysed
    due: float = 0.0  # monotonic time of its next analysis at the earliest
    motion: Motion | None = None
    analysed: int = 0
    skipped: int = 0
    lag: float = 0.0


@dataclass
class Options:
    feed: str
    broker: str
    fps: float = 5.0
    width: int = 640
    motion_min_area: float = 0.01
    motion_settle: float = 2.0
    onnx_model: str = ""
    onnx_labels: str = ""
    onnx_input: int = 640
    heartbeat: float = 1.0
    orphan_timeout: float = 0.0
    lifeline: int | None = None
    detectors: dict[str, Any] = field(default_factory=dict)


class Analyzer:
    def __init__(self, options: Options, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.options = options
        self.feed: zmq.Socket[bytes] = context.socket(zmq.SUB)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.setsockopt(zmq.RCVHWM, FEED_HWM)
        self.feed.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.feed.connect(options.feed)
        self.link: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.link.setsockopt(zmq.LINGER, 0)
        self.link.setsockopt(zmq.SNDHWM, 1000)
        self.link.setsockopt(zmq.MAXMSGSIZE, analysis.MAX_MESSAGE_BYTES)
        self.link.connect(options.broker)
        self.cameras: dict[str, Watched] = {}
        self.detectors: dict[str, Any] = {}
        self.heard = time.monotonic()
        self.next_status = 0.0
        self.ended: str | None = None
        self.errors: Counter[str] = Counter()

    # -- the broker ------------------------------------------------------------------

    def send(self, kind: str, **fields: Any) -> None:
        try:
            self.link.send(analysis.encode(kind, **fields), zmq.NOBLOCK)
        except zmq.Again:
            self.errors["send_full"] += 1

    def receive_config(self) -> None:
        while True:
            try:
                raw = self.link.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.heard = time.monotonic()
            try:
                message = analysis.decode(raw)
            except analysis.AnalysisError as exc:
                self.errors["bad_message"] += 1
                log.warning("analyzer: a bad message from the broker: %s", exc)
                continue
            if message["type"] == "config":
                self.configure(message["cameras"])

    def configure(self, wanted: dict[str, dict[str, Any]]) -> None:
        for camera in list(self.cameras):
            if camera not in wanted:
                self.feed.setsockopt(zmq.UNSUBSCRIBE, wire.topic(camera))
                del self.cameras[camera]
                log.info("camera %s: analysis off", camera)
        for camera, want in wanted.items():
            current = self.cameras.get(camera)
            if current is None:
                self.feed.setsockopt(zmq.SUBSCRIBE, wire.topic(camera))
                self.cameras[camera] = Watched(want["model"], want["confidence"])
                log.info("camera %s: analysis on (%s)", camera, want["model"])
            elif current.model != want["model"]:
                current.model, current.motion = want["model"], None
                log.info("camera %s: analysis model %s", camera, want["model"])
            self.cameras[camera].confidence = want["confidence"]

    def status(self) -> None:
        self.send(
            "status",
            analysed={c: w.analysed for c, w in self.cameras.items()},
            lag={c: round(w.lag, 4) for c, w in self.cameras.items()},
            skipped={c: w.skipped for c, w in self.cameras.items()},
        )

    # -- frames --------------------------------------------------------------------------

    def drain(self) -> None:
        """Take everything the feed holds; keep the newest frame of each camera."""
        while True:
            try:
                parts = self.feed.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                header, payload = wire.decode([p.buffer for p in parts], MAX_FRAME_BYTES)
            except wire.WireError:
                self.errors["bad_frame"] += 1
                continue
            watched = self.cameras.get(header.camera)
            if watched is None:
                continue
            if watched.newest is not None:
                watched.skipped += 1
            watched.newest = (header, payload)

    def analyse_due(self) -> None:
        now = time.monotonic()
        for camera, watched in list(self.cameras.items()):
            if watched.newest is None or now < watched.due:
                continue
            header, payload = watched.newest
            watched.newest = None
            watched.due = max(watched.due + 1 / self.options.fps, now)
            try:
                self.analyse(camera, watched, header, payload)
            except Exception:
                self.errors["analysis"] += 1
                log.exception("camera %s: analysis failed on frame %d", camera, header.seq)
            watched.analysed += 1
            watched.lag = max(0.0, time.time() - header.captured_at)
            now = time.monotonic()

    def analyse(self, camera: str, watched: Watched, header: wire.FrameHeader, data: Any) -> None:
        grey = watched.model == "motion"
        image = decode(data, header, self.options.width, grey)
        if image is None:
            self.errors["decode"] += 1
            return
        if grey:
            if watched.motion is None:
                watched.motion = Motion(self.options.motion_min_area, self.options.motion_settle)
            changed = watched.motion.update(image, header.captured_at)
            if changed is not None:
                active, area = changed
                self.send(
                    "motion",
                    camera=camera,
                    active=active,
                    area=round(min(1.0, area), 5),
                    seq=header.seq,
                    captured_at=header.captured_at,
                )
            return
        detector = self.detector(watched.model)
        if detector is None:
            return
        found: list[Found] = detector.detect(image)
        scale = header.width / image.shape[1]
        objects = [
            {
                "label": item.label,
                "confidence": round(item.confidence, 4),
                "box": [min(round(v * scale), wire.MAX_DIMENSION) for v in item.box],
            }
            for item in sorted(found, key=lambda f: -f.confidence)
            if item.confidence >= watched.confidence
        ][: analysis.MAX_OBJECTS]
        if objects:
            self.send(
                "objects",
                camera=camera,
                seq=header.seq,
                captured_at=header.captured_at,
                width=header.width,
                height=header.height,
                model=watched.model,
                objects=objects,
            )

    def detector(self, model: str) -> Any:
        if model not in self.detectors:
            try:
                self.detectors[model] = self.make_detector(model)
            except Exception as exc:  # a missing or bad ONNX file: report, carry on
                log.error("analyzer: the %s detector is unavailable: %s", model, exc)
                self.detectors[model] = None
        return self.detectors[model]

    def make_detector(self, model: str) -> Any:
        if model == "face":
            return Faces()
        if model == "person":
            return People()
        if model == "onnx":
            if not self.options.onnx_model:
                raise RuntimeError("analytics.onnx_model is not set")
            return Onnx(self.options.onnx_model, self.options.onnx_labels, self.options.onnx_input)
        raise RuntimeError(f"unknown model {model}")

    # -- the loop -----------------------------------------------------------------

    def run(self, stopping: list[bool]) -> None:
        poller = zmq.Poller()
        poller.register(self.feed, zmq.POLLIN)
        poller.register(self.link, zmq.POLLIN)
        if self.options.lifeline is not None:
            poller.register(self.options.lifeline, zmq.POLLIN)
        self.send("hello", pid=os.getpid())
        while not stopping and self.ended is None:
            now = time.monotonic()
            if now >= self.next_status:
                self.status()
                self.next_status = now + self.options.heartbeat
            orphan = self.options.orphan_timeout
            if orphan and now - self.heard > orphan:
                self.ended = f"no word from the broker for {now - self.heard:.1f} s"
                break
            waits = [self.next_status - now]
            waits += [w.due - now for w in self.cameras.values() if w.newest is not None]
            timeout = max(0.0, min(waits))
            ready = dict(poller.poll(math.ceil(timeout * 1000)))
            lifeline = self.options.lifeline
            if lifeline is not None and lifeline in ready and not _read(lifeline):
                self.ended = "the broker is gone (the lifeline closed)"
                break
            self.receive_config()
            self.drain()
            self.analyse_due()

    def close(self) -> None:
        self.feed.close(linger=0)
        self.link.close(linger=0)


def decode(data: Any, header: wire.FrameHeader, width: int, grey: bool) -> np.ndarray | None:
    """The frame decoded (grey or BGR), downscaled to ``width`` pixels at most."""
    buffer = np.frombuffer(data, np.uint8)
    reduce = 1
    if header.format == "jpeg":
        while reduce < 8 and header.width // (reduce * 2) >= width:
            reduce *= 2
    flags = {
        (1, True): cv2.IMREAD_GRAYSCALE,
        (1, False): cv2.IMREAD_COLOR,
        (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
        (2, False): cv2.IMREAD_REDUCED_COLOR_2,
        (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4,
        (4, False): cv2.IMREAD_REDUCED_COLOR_4,
        (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
        (8, False): cv2.IMREAD_REDUCED_COLOR_8,
    }[(reduce, grey)]
    image = cv2.imdecode(buffer, flags)
    if image is None:
        return None
    if image.shape[1] > width:
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def _read(fd: int) -> bool:
    """False when the lifeline reached EOF (the broker died)."""
    try:
        return bool(os.read(fd, 64))
    except BlockingIOError:
        return True
    except OSError:
        return False


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="camera-analyzer", description="Motion, face and person detection for a broker."
    )
    parser.add_argument("--feed", required=True, help="the broker's frame feed endpoint")
    parser.add_argument("--broker", required=True, help="the broker's analytics endpoint")
    parser.add_argument("--fps", type=float, default=5.0, help="analyses per camera per second")
    parser.add_argument("--width", type=int, default=640, help="analysed width in pixels")
    parser.add_argument("--motion-min-area", type=float, default=0.01)
    parser.add_argument("--motion-settle", type=float, default=2.0)
    parser.add_argument("--onnx-model", default="")
    parser.add_argument("--onnx-labels", default="")
    parser.add_argument("--onnx-input", type=int, default=640)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--orphan-timeout", type=float, default=0.0)
    parser.add_argument("--lifeline", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not (args.fps > 0 and args.width >= 16 and args.heartbeat > 0):
        parser.error("--fps and --heartbeat must be above 0, --width at least 16")
    if args.lifeline is not None:
        os.set_blocking(args.lifeline, False)
    return Options(
        feed=args.feed,
        broker=args.broker,
        fps=args.fps,
        width=args.width,
        motion_min_area=args.motion_min_area,
        motion_settle=args.motion_settle,
        onnx_model=args.onnx_model,
        onnx_labels=args.onnx_labels,
        onnx_input=args.onnx_input,
        heartbeat=args.heartbeat,
        orphan_timeout=args.orphan_timeout,
        lifeline=args.lifeline,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    stopping: list[bool] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    cv2.setNumThreads(1)  # one core per analyzer: the broker and workers need theirs
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    analyzer = Analyzer(options, context)
    log.info("analyzer: started (pid %d), feed %s", os.getpid(), options.feed)
    try:
        analyzer.run(stopping)
    finally:
        analyzer.close()
        context.term()
    if analyzer.ended:
        log.warning("analyzer: exiting: %s", analyzer.ended)
    return 0


if __name__ == "__main__":
    sys.exit(main())
