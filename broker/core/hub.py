"""Cameras and their subscribers: the pure core of fan-out.

``Hub.publish`` is synchronous and never awaits: it records the frame on its camera
and offers the same `Frame` object to each subscriber's drop-oldest queue. A slow
subscriber only drops its own frames.

`HubHooks` let the control plane react without the hub knowing it: a camera gaining or
losing a watcher (an on-demand camera starts or stops capturing), coming online or going
offline (events). They are called synchronously and must not block; never per frame.

Stale frames are never shown as live: `Freshness` judges each camera frame on arrival
(a backlog released after a network partition, a frame reordered far behind the newest)
and `Hub.publish` drops the stale ones, counting them as ``errors["stale"]``.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import trio

from broker.config import RetentionConfig
from broker.core.frame import Frame
from broker.core.queue import DropOldestQueue
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.hub")

DEFAULT_RETENTION = RetentionConfig()


class Outcome(enum.Enum):
    """What `Hub.publish` did with a frame."""

    LIVE = "live"  # recorded and offered to every subscriber
    STALE = "stale"  # dropped: too old to be shown as live (`Freshness`)
    FULL = "too_many_cameras"  # dropped: a new camera beyond ``max_cameras``
    UNKNOWN = "unknown_camera"  # refused: not configured, and unknown ones are not accepted


class UnknownCamera(KeyError):
    pass


class SubscriptionEnded(Exception):
    """The camera is gone (an expired ad-hoc session): the client should be closed."""


class RateMeter:
    """Events per second over a sliding window of recent timestamps."""

    __slots__ = ("_times", "window")

    def __init__(self, window: float = 2.0, keep: int = 512) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=keep)

    def tick(self, now: float) -> None:
        times = self._times
        times.append(now)
        # Keep only the window (fps x window entries): a slow client's meter would
        # otherwise grow to `keep` entries, 17 KB that every connection would pay.
        while now - times[0] > self.window:
            times.popleft()

    def rate(self, now: float) -> float:
        times = self._times
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(now - times[0], 1e-9)


# Late frames arriving for this long are a step of the camera's clock, not a backlog.
CLOCK_SETTLE = 1.0
# The camera's clock offset is the smallest transit time seen over the last one or two
# such windows (seconds): long enough for a steady minimum, short enough to follow drift.
OFFSET_WINDOW = 10.0


class Freshness:
    """Whether each frame of one camera is live or stale, judged on arrival. Pure: the
    caller gives both times.

    A frame carries its capture time from the camera's clock (Unix seconds), which may
    be off from ours by minutes. So we never compare it with our clock directly: the
    *transit* of a frame (arrival on our monotonic clock minus capture time) is the true
    delay plus an unknown constant offset, and the smallest transit seen recently is the
    best estimate of that offset. A frame is **stale** when it arrives more than
    ``max_age`` later than that baseline (a backlog a partition released), or was
    captured more than ``max_age`` before the newest frame shown (reordered).

    A backlog arrives as a burst; a clock step (the camera's clock was set back) shows
    as a steady stream of "late" frames. So when stale frames keep arriving for longer
    than ``settle`` seconds, the clock moved: take a new baseline from them and accept
    the stream again. A step forward looks like faster transit and is accepted at once.
    """

    __slots__ = ("_best", "_best_before", "_late_best", "_late_since", "_window_start",
                 "max_age", "newest", "settle", "window")  # fmt: skip

    def __init__(
        self, max_age: float, settle: float = CLOCK_SETTLE, window: float = OFFSET_WINDOW
    ) -> None:
        self.max_age = max_age
        self.settle = settle
        self.window = window
        self.newest = -math.inf  # capture time of the newest frame judged live
        self._best = math.inf  # smallest transit in the current window
        self._best_before = math.inf  # ... in the window before it
        self._window_start = -math.inf
        self._late_since: float | None = None  # arrival of the first of a run of stale frames
        self._late_best = math.inf  # smallest transit in that run

    @property
    def offset(self) -> float:
        """The baseline transit (arrival minus capture time); inf before any frame."""
        return min(self._best, self._best_before)

    def live(self, arrived: float, captured: float) -> bool:
        """Judge one frame: ``arrived`` on the monotonic clock, ``captured`` on the
        camera's. True: show it. False: stale, drop it."""
        transit = arrived - captured
        if arrived - self._window_start >= self.window:
            # After a long silence the last window still holds the old minimum: a
            # backlog arriving now is judged against the offset from before it.
            self._best_before, self._best = self._best, math.inf
            self._window_start = arrived
        late = transit - self.offset
        self._best = min(self._best, transit)
        if late <= self.max_age and self.newest - captured <= self.max_age:
            self._late_since = None
            self.newest = max(self.newest, captured)
            return True
        if self._late_since is None:
            self._late_since, self._late_best = arrived, transit
        else:
            self._late_best = min(self._late_best, transit)
        if arrived - self._late_since < self.settle:
            return False
        # Stale for `settle` seconds on end: the camera's clock stepped back.
        self._best = self._best_before = self._late_best
        self._window_start = arrived
        self._late_since = None
        self.newest = captured
        return True


class Subscriber:
    """One client's interest in one camera, with its own drop-oldest queue."""

    __slots__ = (
        "_ready", "bytes_sent", "camera", "client", "closed", "connected_at", "direct",
        "inflight", "interval", "kind", "lag", "next_due", "queue", "rate", "sent",
    )  # fmt: skip

    def __init__(self, camera: Camera, client: str, depth: int, kind: str = "websocket") -> None:
        self.camera = camera
        self.client = client
        self.kind = kind  # which output: websocket, mjpeg
        self.queue: DropOldestQueue[Frame] = DropOldestQueue(depth)
        self.sent = 0
        self.bytes_sent = 0
        self.lag = 0.0  # seconds from the broker receiving the last frame sent to its delivery
        self.connected_at = time.monotonic()
        self.closed = False
        self.rate = RateMeter()
        self.interval = 0.0  # > 0: at most one frame per interval (a ?fps= cap)
        self.next_due = 0.0  # time.monotonic() before which a capped client takes no frame
        # While the client's sender waits with nothing queued, `offer` may hand a frame
        # to ``direct``, which writes it at once if the socket takes it (True: handled).
        self.direct: Callable[[Frame], bool] | None = None
        self.inflight: tuple[Frame, memoryview] | None = None  # partly written by direct
        self._ready = trio.Event()

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def offer(self, frame: Frame) -> None:
        direct = self.direct
        if direct is not None and not self.queue and direct(frame):  # never past a queued one
            return
        self.queue.put(frame)
        # A capped client is woken by the first frame at or after its due time: no timer
        # per client, and no wake-up for the frames it skips.
        if not self.interval or frame.received_at >= self.next_due or frame.placeholder:
            self._ready.set()

    async def next_frame(
        self, newest: bool = False, direct: Callable[[Frame], bool] | None = None
    ) -> Frame:
        """Wait for a frame: the oldest queued, or with ``newest`` the newest; a capped
        client (``interval``) waits for its due time too. While it waits with nothing
        queued, frames go to ``direct`` first; one it wrote only in part is returned
        with the rest in `inflight`, which the caller must write before anything else."""
        while True:
            if self.closed:
                raise SubscriptionEnded(self.camera.id)
            if not self.interval or time.monotonic() >= self.next_due:
                frame = self.queue.get_newest() if newest else self.queue.get()
                if frame is not None:
                    return frame
            self._ready = trio.Event()
            self.direct = None if self.interval else direct
            try:
                await self._ready.wait()
            finally:
                self.direct = None
            if self.inflight is not None:
                return self.inflight[0]

    def written_in_part(self, frame: Frame, rest: memoryview) -> None:
        """``direct`` wrote part of ``frame``: the sender must write ``rest`` next."""
        self.direct = None
        self.inflight = (frame, rest)
        self._ready.set()

    def cap(self, max_fps: float | None) -> None:
        """Take at most ``max_fps`` frames a second (None: every frame)."""
        self.interval = 1 / max_fps if max_fps else 0.0

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def delivered(self, frame: Frame) -> None:
        self.sent += 1
        self.bytes_sent += frame.size
        now = time.monotonic()
        self.lag = now - frame.received_at
        self.rate.tick(now)

    def stats(self, now: float) -> dict[str, object]:
        return {
            "client": self.client,
            "kind": self.kind,
            "frames_sent": self.sent,
            "frames_dropped": self.dropped,
            "fps": round(self.rate.rate(now), 2),
            "bytes_sent": self.bytes_sent,
            "queue_depth": len(self.queue),
            "lag_ms": round(self.lag * 1000, 1),
            "connected_s": round(now - self.connected_at, 1),
        }


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """What the hub knows of a camera before any frame: from the config or the first frame."""

    id: str
    name: str
    width: int
    height: int
    format: str = "jpeg"
    configured: bool = True
    session: bool = False  # an ad-hoc camera made by POST /api/sessions


class Camera:
    __slots__ = (
        "arrived",
        "created_at",
        "departed",
        "frames_received",
        "freshness",
        "info",
        "last_frame_at",
        "latest",
        "online",
        "placeholder",
        "rate",
        "recent",
        "subscribers",
        "upload_seq",
    )

    def __init__(self, info: CameraInfo, stale_after: float = math.inf) -> None:
        self.info = info
        self.freshness = Freshness(stale_after)  # judges each frame of this camera
        self.latest: Frame | None = None  # newest frame from the camera itself
        self.placeholder: Frame | None = None  # newest "No Data" frame while offline
        self.last_frame_at: float | None = None
        self.frames_received = 0
        self.online = False
        self.rate = RateMeter()
        self.subscribers: set[Subscriber] = set()
        self.departed = [0, 0, 0]  # frames sent, dropped, bytes sent of subscribers gone
        self.recent: deque[Frame] = deque()  # the retention window, oldest first
        self.arrived = trio.Event()  # set (and replaced) on each frame, for next.jpg waiters
        self.created_at = time.monotonic()
        self.upload_seq = 0  # next sequence number for frames uploaded over HTTP

    @property
    def id(self) -> str:
        return self.info.id

    def silent_for(self, now: float) -> float | None:
        """Seconds since the last frame, or None when none ever came."""
        return None if self.last_frame_at is None else now - self.last_frame_at

    def delivery_totals(self) -> tuple[int, int, int]:
        """Frames sent, frames dropped and bytes sent to all clients ever, summed on demand
        so that the hot path counts nothing twice."""
        sent, dropped, sent_bytes = self.departed
        for subscriber in self.subscribers:
            sent += subscriber.sent
            dropped += subscriber.dropped
            sent_bytes += subscriber.bytes_sent
        return sent, dropped, sent_bytes

    @property
    def size(self) -> tuple[int, int]:
        """The last known frame size, else the configured one."""
        if self.latest is not None:
            return self.latest.width, self.latest.height
        return self.info.width, self.info.height

    def summary(self, now: float) -> dict[str, object]:
        width, height = self.size
        silent = self.silent_for(now)
        age = None if silent is None else round(silent * 1000)
        return {
            "id": self.id,
            "name": self.info.name,
            "online": self.online,
            "fps": round(self.rate.rate(now), 2) if self.online else 0.0,
            "width": width,
            "height": height,
            "format": self.latest.format if self.latest is not None else self.info.format,
            "clients": len(self.subscribers),
            "frames_received": self.frames_received,
            "last_frame_age_ms": age,
        }


def _ignore(camera: Camera) -> None:
    pass


class HubHooks:
    """Callbacks on camera transitions; each takes the `Camera`. Replace the attributes."""

    __slots__ = ("offline", "online", "unwatched", "watched")

    def __init__(self) -> None:
        self.watched: Callable[[Camera], None] = _ignore  # after a subscriber was added
        self.unwatched: Callable[[Camera], None] = _ignore  # after a subscriber was removed
        self.online: Callable[[Camera], None] = _ignore  # a frame after silence (or the first)
        self.offline: Callable[[Camera], None] = _ignore  # silent for offline_after


class Hub:
    def __init__(
        self,
        cameras: Iterable[CameraInfo],
        *,
        offline_after: float,
        accept_unknown: bool = False,
        retention: RetentionConfig = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.monotonic,
        errors: Counter[str] | None = None,
        max_cameras: int = 256,
    ) -> None:
        self.retention = retention
        self.max_cameras = max_cameras  # a bound on ad-hoc and unconfigured cameras
        self.retained_bytes = 0
        self.offline_after = offline_after  # also the most a frame may be late (`Freshness`)
        self.cameras: dict[str, Camera] = {info.id: self._new(info) for info in cameras}
        self.accept_unknown = accept_unknown
        self.clock = clock
        self.rejected_unknown = 0
        # Frames dropped, by reason ("stale"): the broker passes its ingest error counts.
        self.errors: Counter[str] = errors if errors is not None else Counter()
        self.hooks = HubHooks()
        self._complaints = LogThrottle(log)

    def _new(self, info: CameraInfo) -> Camera:
        return Camera(info, stale_after=self.offline_after)

    def camera(self, camera_id: str) -> Camera:
        try:
            return self.cameras[camera_id]
        except KeyError:
            raise UnknownCamera(camera_id) from None

    def publish(self, frame: Frame) -> Outcome:
        """Record a camera frame and offer it to every subscriber (`Outcome.LIVE`).
        A stale frame (`Freshness`), or the first of a new camera beyond ``max_cameras``,
        is dropped and counted in ``errors`` under the outcome's value: no viewer gets it,
        and it does not count as the camera being alive."""
        camera = self.cameras.get(frame.camera)
        if camera is None:
            if not self.accept_unknown:
                self.rejected_unknown += 1
                return Outcome.UNKNOWN
            if self.full:
                self.errors[Outcome.FULL.value] += 1
                self._complaints.warning("too_many_cameras", "camera %s: frame dropped, the "
                                         "broker holds ingest.max_cameras (%d) cameras already",
                                         frame.camera, self.max_cameras)  # fmt: skip
                return Outcome.FULL
            info = CameraInfo(
                frame.camera,
                frame.camera,
                frame.width,
                frame.height,
                frame.format,
                configured=False,
            )
            camera = self.cameras[frame.camera] = self._new(info)
            log.info("camera %s: first frame from an unconfigured camera, accepted", camera.id)
        if not camera.freshness.live(frame.received_at, frame.captured_at):
            self._stale(camera, frame)
            return Outcome.STALE
        camera.latest = frame
        camera.placeholder = None
        camera.last_frame_at = frame.received_at
        camera.frames_received += 1
        camera.rate.tick(frame.received_at)
        if not camera.online:
            camera.online = True
            log.info(
                "camera %s: online (%dx%d %s)", camera.id, frame.width, frame.height, frame.format
            )
            self.hooks.online(camera)
        for subscriber in camera.subscribers:
            subscriber.offer(frame)
        self._retain(camera, frame)
        camera.arrived.set()
        camera.arrived = trio.Event()
        return Outcome.LIVE

    def _stale(self, camera: Camera, frame: Frame) -> None:
        self.errors[Outcome.STALE.value] += 1
        freshness = camera.freshness
        late = frame.received_at - frame.captured_at - freshness.offset
        behind = freshness.newest - frame.captured_at
        self._complaints.warning("stale", "camera %s: dropped a stale frame (seq %d, %.1f s "
                                 "late, %.1f s behind the newest; the limit is %g s)",
                                 camera.id, frame.seq, late, behind,
                                 freshness.max_age)  # fmt: skip

    def _retain(self, camera: Camera, frame: Frame) -> None:
        if camera.recent:  # no longer the newest: clients have (nearly) all sent it
            camera.recent[-1].release_messages()
        camera.recent.append(frame)
        self.retained_bytes += frame.size
        if len(camera.recent) > self.retention.frames:
            self.retained_bytes -= camera.recent.popleft().size
        while self.retained_bytes > self.retention.max_bytes:
            oldest = min(
                (c for c in self.cameras.values() if c.recent),
                key=lambda c: c.recent[0].received_at,
            )
            self.retained_bytes -= oldest.recent.popleft().size

    def expire(self, now: float) -> None:
        """Forget retained frames older than the TTL."""
        for camera in self.cameras.values():
            while camera.recent and now - camera.recent[0].received_at > self.retention.max_age:
                self.retained_bytes -= camera.recent.popleft().size

    def next_after(self, camera: Camera, after: int) -> Frame | None:
        """The oldest retained frame newer than sequence number ``after`` (seed 003)."""
        self.expire(self.clock())
        for frame in camera.recent:
            if frame.seq > after:
                return frame
        return None

    @property
    def full(self) -> bool:
        """True when no more ad-hoc or unconfigured cameras may be added."""
        return len(self.cameras) >= self.max_cameras

    def add_camera(self, info: CameraInfo) -> Camera:
        camera = self.cameras[info.id] = self._new(info)
        return camera

    def remove_camera(self, camera: Camera) -> None:
        """Drop a camera: its clients are told the subscription ended, its frames freed."""
        del self.cameras[camera.id]
        for subscriber in list(camera.subscribers):
            subscriber.close()
        self.retained_bytes -= sum(frame.size for frame in camera.recent)
        camera.recent.clear()

    def rename(self, camera_id: str, name: str) -> None:
        """Show ``name`` as the camera's display name; an unknown camera is ignored."""
        camera = self.cameras.get(camera_id)
        if camera is not None and camera.info.name != name:
            camera.info = replace(camera.info, name=name)

    def publish_placeholder(self, camera: Camera, frame: Frame) -> None:
        """Offer a generated "No Data" frame for an offline camera to its subscribers."""
        camera.placeholder = frame
        for subscriber in camera.subscribers:
            subscriber.offer(frame)

    def mark_offline(self, now: float) -> list[Camera]:
        """Mark cameras silent for ``offline_after`` as offline; returns every offline camera."""
        offline = []
        for camera in self.cameras.values():
            silent = (
                camera.last_frame_at is None or now - camera.last_frame_at >= self.offline_after
            )
            if camera.online and silent:
                camera.online = False
                log.warning(
                    "camera %s: offline, no frame for %.1f s",
                    camera.id,
                    now - (camera.last_frame_at or now),
                )
                self.hooks.offline(camera)
            if not camera.online:
                offline.append(camera)
        return offline

    def subscribe(
        self, camera_id: str, client: str, depth: int, kind: str = "websocket"
    ) -> Subscriber:
        """A new subscriber, given the latest frame at once if it is fresh."""
        camera = self.camera(camera_id)
        subscriber = Subscriber(camera, client, depth, kind)
        camera.subscribers.add(subscriber)
        fresh = camera.last_frame_at is not None and (
            self.clock() - camera.last_frame_at < self.offline_after
        )
        if fresh and camera.latest is not None:
            subscriber.offer(camera.latest)
        elif camera.placeholder is not None:
            subscriber.offer(camera.placeholder)
        self.hooks.watched(camera)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        camera = subscriber.camera
        if subscriber in camera.subscribers:
            camera.subscribers.discard(subscriber)
            camera.departed[0] += subscriber.sent
            camera.departed[1] += subscriber.dropped
            camera.departed[2] += subscriber.bytes_sent
            self.hooks.unwatched(camera)
        subscriber.queue.clear()  # free the frames it held

    @property
    def client_count(self) -> int:
        return sum(len(camera.subscribers) for camera in self.cameras.values())
