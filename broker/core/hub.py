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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from broker.config import RetentionConfig
from broker.core.camera import Camera, CameraInfo
from broker.core.frame import Frame
from broker.core.subscriber import Subscriber
from broker.core.transcode import needs_jpeg
from broker.protocol.wire import raw_bytes
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.hub")

DEFAULT_RETENTION = RetentionConfig()
# A viewer of a camera whose raw frames are larger queues one frame, whatever
# server.queue_depth says (`Hub.subscribe`).
LARGE_FRAME = 8 * 1024 * 1024


class Outcome(enum.Enum):
    """What `Hub.publish` did with a frame."""

    LIVE = "live"  # recorded and offered to every subscriber
    STALE = "stale"  # dropped: too old to be shown as live (`Freshness`)
    FULL = "too_many_cameras"  # dropped: a new camera beyond ``max_cameras``
    UNKNOWN = "unknown_camera"  # refused: not configured, and unknown ones are not accepted


class UnknownCamera(KeyError):
    pass


def _ignore(camera: Camera) -> None:
    pass


def _ignore_frame(frame: Frame) -> None:
    pass


class HubHooks:
    """Callbacks on camera transitions; each takes the `Camera` (``frame``: the `Frame`).
    Replace the attributes."""

    __slots__ = ("frame", "offline", "online", "unwatched", "watched")

    def __init__(self) -> None:
        self.watched: Callable[[Camera], None] = _ignore  # after a subscriber was added
        self.unwatched: Callable[[Camera], None] = _ignore  # after a subscriber was removed
        self.online: Callable[[Camera], None] = _ignore  # a frame after silence (or the first)
        self.offline: Callable[[Camera], None] = _ignore  # silent for offline_after
        # Every live frame, after its subscribers were offered it (the frame feed).
        self.frame: Callable[[Frame], None] = _ignore_frame


def _for(subscriber: Subscriber, frame: Frame) -> Frame:
    """``frame``, or for a browser output its JPEG when it has one."""
    if subscriber.browser and frame.derived is not None:
        return frame.derived
    return frame


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
        # Called (per frame, must be cheap) when a camera has a frame waiting for its
        # browser JPEG (`Camera.derive_pending`); the composition root installs the
        # deriver's (`broker.serve.derive`). Left alone, nothing is derived.
        self.derive: Callable[[Camera], None] = _ignore
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
                self._complaints.warning(
                    "too_many_cameras",
                    "camera %s: frame dropped, the "
                    "broker holds ingest.max_cameras (%d) cameras already",
                    frame.camera,
                    self.max_cameras,
                )
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
        if needs_jpeg(frame.format):
            # Browser outputs get the JPEG derived from it, once made (`publish_derived`).
            for subscriber in camera.subscribers:
                if not subscriber.browser:
                    subscriber.offer(frame)
            if camera.browsers:
                self.want_jpeg(camera, frame)
        else:
            for subscriber in camera.subscribers:
                subscriber.offer(frame)
        self._retain(camera, frame)
        self.hooks.frame(frame)
        if camera.arrivals:
            arrivals, camera.arrivals = camera.arrivals, set()
            for wake in arrivals:
                wake()
        return Outcome.LIVE

    def want_jpeg(self, camera: Camera, frame: Frame) -> None:
        """Ask for the JPEG of ``frame`` (the newest wins over one still waiting)."""
        camera.derive_pending = frame
        if not camera.deriving:
            self.derive(camera)

    def publish_derived(self, camera: Camera, frame: Frame) -> None:
        """Offer ``frame`` (a JPEG `Frame.derive` made) to the browser subscribers of
        ``camera``, unless the camera went offline meanwhile ("No Data" is showing). A
        newer camera frame may have come: this one is still the newest JPEG there is."""
        if camera.placeholder is not None:
            return
        for subscriber in camera.subscribers:
            if subscriber.browser:
                subscriber.offer(frame)

    def _stale(self, camera: Camera, frame: Frame) -> None:
        self.errors[Outcome.STALE.value] += 1
        freshness = camera.freshness
        late = frame.received_at - frame.captured_at - freshness.offset
        behind = freshness.newest - frame.captured_at
        self._complaints.warning(
            "stale",
            "camera %s: dropped a stale frame (seq %d, %.1f s "
            "late, %.1f s behind the newest; the limit is %g s)",
            camera.id,
            frame.seq,
            late,
            behind,
            freshness.max_age,
        )

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
        """The oldest retained frame newer than sequence number ``after``."""
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
        """Offer a generated "No Data" frame for an offline camera to its subscribers:
        in the camera's own format, its JPEG (``frame.derived``) to browser outputs."""
        camera.placeholder = frame
        for subscriber in camera.subscribers:
            subscriber.offer(_for(subscriber, frame))

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
        self,
        camera_id: str,
        client: str,
        depth: int,
        kind: str = "websocket",
        browser: bool = False,
    ) -> Subscriber:
        """A new subscriber, given the latest frame at once if it is fresh. With
        ``browser`` it takes JPEGs only: derived ones for a camera of a raw format."""
        camera = self.camera(camera_id)
        if not browser and needs_jpeg(camera.format) and raw_bytes(*camera.size) > LARGE_FRAME:
            depth = 1  # a queued 4K frame is 25 MB and 33 ms of latency: the newest only
        subscriber = Subscriber(camera, client, depth, kind, browser)
        camera.subscribers.add(subscriber)
        if browser:
            camera.browsers += 1
        fresh = camera.last_frame_at is not None and (
            self.clock() - camera.last_frame_at < self.offline_after
        )
        latest = camera.latest
        if fresh and latest is not None:
            if not (browser and needs_jpeg(latest.format)):
                subscriber.offer(latest)
            elif latest.derived is not None:
                subscriber.offer(latest.derived)
            elif camera.derive_pending is None:
                self.want_jpeg(camera, latest)
        elif camera.placeholder is not None:
            subscriber.offer(_for(subscriber, camera.placeholder))
        self.hooks.watched(camera)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        camera = subscriber.camera
        if subscriber in camera.subscribers:
            camera.subscribers.discard(subscriber)
            if subscriber.browser:
                camera.browsers -= 1
            camera.departed[0] += subscriber.sent
            camera.departed[1] += subscriber.dropped
            camera.departed[2] += subscriber.bytes_sent
            self.hooks.unwatched(camera)
        subscriber.queue.clear()  # free the frames it held

    @property
    def client_count(self) -> int:
        return sum(len(camera.subscribers) for camera in self.cameras.values())
