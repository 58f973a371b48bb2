"""Analytics, the broker's side: the frame feed, the analyzer's supervision, its results.

- The **frame feed** is a ZeroMQ PUB socket on which the broker republishes every frame
  it accepted (from ZeroMQ ingest or HTTP uploads), as the same 3-part message as ingest
  (`broker.protocol.wire`), topic = the camera id. The payload is sent without copying.
  Its send high-water mark is small: a slow subscriber loses frames (PUB drops), it
  never holds up the broker. Bound on a private ipc:// endpoint for our analyzer and on
  ``analytics.feed_endpoints`` for anyone else (docs/protocol.md, "Frame feed").
- The **analyzer** (``camera-analyzer``, `cameras.analysis`) is supervised like a
  worker (`broker.control.supervisor`): started, restarted with backoff when it exits
  or stays silent, stopped at shutdown. It talks over a ROUTER
  (`broker.protocol.analysis`): the broker sends ``config`` (the cameras to analyse,
  from their ai_* settings) on hello, on every change and every heartbeat; the analyzer
  sends ``status``, ``motion`` and ``objects``.
- **Results** become ``/ws`` events (motion_started, motion_stopped, objects_detected),
  the detections ring, counts for /api/stats, /metrics and /healthz (`results`).

Results for a camera whose analysis is off are dropped here, so turning ai_enabled off
stops its events at once, whatever the analyzer still had in flight.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import trio
import zmq

from broker.analytics.results import Outgoing, Results
from broker.config import Config
from broker.control.supervisor import Supervisor
from broker.core.events import EventBus
from broker.core.frame import Frame
from broker.protocol import analysis, wire
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.zmqtrio import TrioSocket, bound_socket

log = logging.getLogger("broker.analytics")

FEED_HWM = 16  # frames queued per feed subscriber before PUB drops them
NAME = "analyzer"


def analyzer_command(
    config: Config, feed: str, endpoint: str, log_level: str, lifeline: int | None
) -> list[str]:
    analytics = config.analytics
    heartbeat = config.control.heartbeat_interval
    orphan = max(config.workers.orphan_timeout, 2 * heartbeat)
    return [
        sys.executable,
        "-m",
        "cameras.analysis.analyzer",
        "--feed",
        feed,
        "--broker",
        endpoint,
        "--fps",
        f"{analytics.fps:g}",
        "--width",
        str(analytics.analyse_width),
        "--motion-min-area",
        f"{analytics.motion_min_area:g}",
        "--motion-settle",
        f"{analytics.motion_settle:g}",
        "--onnx-model",
        analytics.onnx_model,
        "--onnx-labels",
        analytics.onnx_labels,
        "--onnx-input",
        str(analytics.onnx_input),
        "--heartbeat",
        f"{heartbeat:g}",
        "--orphan-timeout",
        f"{orphan:g}",
        "--log-level",
        log_level,
        *(["--lifeline", str(lifeline)] if lifeline is not None else []),
    ]


class Feed:
    """The frame feed: `publish` is the hub's frame hook; never blocks, never copies the
    payload."""

    def __init__(self, socket: zmq.Socket[bytes], endpoints: list[str]) -> None:
        self.socket = socket
        self.endpoints = endpoints
        self.published = 0

    def publish(self, frame: Frame) -> None:
        header = wire.FrameHeader(
            frame.camera, frame.seq, frame.captured_at, frame.width, frame.height, frame.format
        )
        try:
            self.socket.send_multipart(wire.encode(header, frame.data), zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # PUB drops rather than block; a closed socket at shutdown
            return
        self.published += 1


class Analytics:
    def __init__(
        self,
        config: Config,
        events: EventBus,
        settings: Callable[[str], Mapping[str, Any]],
        cameras: Callable[[], list[str]],
        *,
        faults: Faults | None = None,
        log_level: str = "info",
    ) -> None:
        self.config = config
        self.events = events
        self.settings = settings  # a camera's broker-owned settings (ai_*)
        self.camera_ids = cameras  # the cameras the broker knows now
        self.faults = faults if faults is not None else Faults()
        self.log_level = log_level
        self.results = Results(config.analytics.history, config.analytics.events_per_second)
        self.feed: Feed | None = None
        self.router: TrioSocket | None = None
        self.endpoint = ""
        self.identity: bytes | None = None  # the analyzer's, from its hello
        self.pid: int | None = None
        self.last_heard: float | None = None  # trio time of its last message
        self.supervisor: Supervisor | None = None
        self.errors: Counter[str] = Counter()
        self.complaints = LogThrottle(log)
        self.enabled: dict[str, dict[str, Any]] = {}  # the config last sent

    # -- setting up -----------------------------------------------------------------

    def bind(self, context: zmq.Context[zmq.Socket[bytes]], folder: str) -> Feed:
        """Bind the feed (PUB) and the analyzer's ROUTER; raises `zmq.ZMQError`."""
        socket, endpoints = bound_socket(
            context,
            zmq.PUB,
            [f"ipc://{folder}/feed.ipc", *self.config.analytics.feed_endpoints],
            {zmq.SNDHWM: FEED_HWM},
        )
        self.feed = Feed(socket, endpoints)
        router, bound = bound_socket(
            context,
            zmq.ROUTER,
            [f"ipc://{folder}/analytics.ipc"],
            {
                zmq.ROUTER_MANDATORY: 1,
                zmq.ROUTER_HANDOVER: 1,
                zmq.MAXMSGSIZE: analysis.MAX_MESSAGE_BYTES,
                zmq.SNDHWM: 100,
            },
        )
        self.router = TrioSocket(router, sends=True)
        self.endpoint = bound[0]
        for endpoint in endpoints:
            log.info("frame feed bound on %s", endpoint)
        return self.feed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        router, feed = self.router, self.feed
        if router is None or feed is None:
            raise RuntimeError("Analytics.bind must be called before Analytics.run")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, router, name="analytics:receive")
                nursery.start_soon(
                    self.faults.keep_running,
                    "analytics:config",
                    self._keep_configured,
                    name="analytics:config",
                )
                self.supervisor = Supervisor(
                    self.config.workers,
                    feed.endpoints[0],
                    self.log_level,
                    control=self.endpoint,
                    heartbeat=self.config.control.heartbeat_interval,
                    on_exit=self._exited,
                    silent_for=self.silent_for,
                    lost_after=self.config.control.lost_after,
                    faults=self.faults,
                )
                command = self._command
                nursery.start_soon(
                    self.supervisor.run, [], {NAME: command}, name="analytics:supervisor"
                )
                task_status.started()
        finally:
            router.close()
            feed.socket.close(linger=0)

    def _command(self, lifeline: int | None) -> list[str]:
        assert self.feed is not None
        return analyzer_command(
            self.config, self.feed.endpoints[0], self.endpoint, self.log_level, lifeline
        )

    # -- the analyzer ---------------------------------------------------------------

    def silent_for(self, name: str) -> float | None:
        if self.last_heard is None:
            return None
        return trio.current_time() - self.last_heard

    def _exited(self, name: str, pid: int, how: str) -> None:
        log.warning("analyzer pid %d exited (%s)", pid, how)
        self.identity = None
        now = time.time()
        for camera in list(self.results.motion_active):  # nobody watches for its end now
            self._publish(self.results.stop(camera, now))
        self.events.publish("analyzer_exited", "", pid=pid, reason=how)

    def wanted(self) -> dict[str, dict[str, Any]]:
        """The cameras to analyse now, from their settings."""
        wanted = {}
        for camera in self.camera_ids():
            settings = self.settings(camera)
            if settings.get("ai_enabled"):
                wanted[camera] = {
                    "model": settings["ai_model"],
                    "confidence": float(settings["ai_confidence"]),
                }
        return wanted

    def configure(self) -> None:
        """Send the analyzer what to analyse; stop the motion of cameras turned off."""
        wanted = self.wanted()
        now = time.time()
        for camera, was in self.enabled.items():
            # Off, or no longer the motion model: its motion, if any, stops now.
            if wanted.get(camera, {}).get("model") != "motion" and was["model"] == "motion":
                self._publish(self.results.stop(camera, now))
        self.enabled = wanted
        if self.identity is not None and self.router is not None:
            try:
                self.router.send_multipart(
                    [self.identity, analysis.encode("config", cameras=wanted)]
                )
            except zmq.ZMQError as exc:
                self.errors["send"] += 1
                self.complaints.warning("send", "analytics: cannot reach the analyzer: %s", exc)

    def settings_changed(self, camera: str, settings: Mapping[str, Any]) -> None:
        """A `Control.on_broker_settings` hook."""
        self.configure()

    async def _keep_configured(self) -> None:
        while True:
            self.configure()
            await trio.sleep(self.config.control.heartbeat_interval)

    async def _receive(self, router: TrioSocket) -> None:
        while True:
            parts = await router.receive_multipart()
            with self.faults.contain("analytics"):
                self._take([p.bytes for p in parts])

    def _take(self, parts: list[bytes]) -> None:
        if len(parts) != 2:
            self.errors["parts"] += 1
            return
        identity, raw = parts
        try:
            message = analysis.decode(raw)
        except analysis.AnalysisError as exc:
            self.errors["malformed"] += 1
            self.complaints.warning("malformed", "analytics: a malformed message: %s", exc)
            return
        self.last_heard = trio.current_time()
        kind = message["type"]
        if kind == "hello":
            previous, self.pid = self.pid, message["pid"]
            self.identity = identity
            self.results.restarted()
            log.info("analyzer pid %d connected", self.pid)
            self.events.publish("analyzer_started", "", pid=self.pid, previous_pid=previous)
            self.configure()
        elif self.identity is None:
            self.errors["before_hello"] += 1
        elif kind == "status":
            self.results.status(message)
        elif kind in ("motion", "objects"):
            camera = message["camera"]
            if camera not in self.enabled:  # turned off meanwhile: its results are void
                self.errors["not_enabled"] += 1
                return
            take = self.results.motion if kind == "motion" else self.results.objects
            self._publish(take(message, time.time()))
        else:
            self.errors["unexpected"] += 1

    def _publish(self, outgoing: Outgoing | None) -> None:
        if outgoing is not None:
            event, camera, data = outgoing
            self.events.publish(event, camera, **data)

    # -- views --------------------------------------------------------------------------

    def detections(self, camera: str, since: float) -> dict[str, Any]:
        return {
            "camera": camera,
            "enabled": camera in self.enabled,
            "motion_active": self.results.motion_active.get(camera, False),
            "results": self.results.since(camera, since),
        }

    def stats(self) -> dict[str, Any]:
        cameras = sorted(set(self.results.cameras()) | set(self.enabled))
        return {camera: self.results.camera_stats(camera) for camera in cameras}

    def health(self) -> dict[str, Any]:
        silent = self.silent_for(NAME)
        restarts = self.supervisor.restarts[NAME] if self.supervisor is not None else 0
        return {
            "ok": self.identity is not None
            and silent is not None
            and silent < 3 * max(self.config.control.heartbeat_interval, 1.0),
            "pid": self.pid,
            "connected": self.identity is not None,
            "silent_s": round(silent, 2) if silent is not None else None,
            "restarts": restarts,
            "cameras": sorted(self.enabled),
            "lag_s": {c: round(v, 4) for c, v in sorted(self.results.lag.items())},
            "feed_frames": self.feed.published if self.feed is not None else 0,
            "errors": dict(self.errors),
        }
