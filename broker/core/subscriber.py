"""One client's interest in one camera: its drop-oldest queue, its pacing, its counters.

Pure and synchronous: `Subscriber.offer` runs inside `Hub.publish` for every client of
a camera, so it never awaits and never knows how the client is served. The client's
sender plugs in two things (`broker.serve.delivery`): ``wake``, called when a frame is
due, and, while the sender is idle, a `DirectWrite` that may write a frame at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from broker.core.frame import Frame
from broker.core.queue import DropOldestQueue

if TYPE_CHECKING:
    from broker.core.camera import Camera


class SubscriptionEnded(Exception):
    """The camera is gone (an expired ad-hoc session): the client should be closed."""


class DirectWrite(Protocol):
    """The direct-write fast path: writes ``frame`` to an idle client from
    `Hub.publish` itself, instead of waking the client's sender. True: it took the frame
    (whole, or in part with the rest left to the sender, which it wakes); False: the
    frame goes to the queue as usual."""

    def __call__(self, frame: Frame, /) -> bool: ...


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


def _nobody_waits() -> None:
    """The ``wake`` of a subscriber whose sender does not wait yet: it looks at the
    queue before it first waits."""


class Subscriber:
    """One client's interest in one camera, with its own drop-oldest queue."""

    __slots__ = (
        "browser",
        "bytes_sent",
        "camera",
        "client",
        "closed",
        "connected_at",
        "direct",
        "interval",
        "kind",
        "lag",
        "next_due",
        "queue",
        "rate",
        "sent",
        "wake",
    )

    def __init__(
        self,
        camera: Camera,
        client: str,
        depth: int,
        kind: str = "websocket",
        browser: bool = False,
    ) -> None:
        self.camera = camera
        self.client = client
        self.kind = kind  # which output: websocket, mjpeg
        # An output a browser shows as an image (MJPEG, snapshot, the viewer page): for a
        # camera of a raw format it gets the JPEG derived from each frame instead.
        self.browser = browser
        self.queue: DropOldestQueue[Frame] = DropOldestQueue(depth)
        self.sent = 0
        self.bytes_sent = 0
        self.lag = 0.0  # seconds from the broker receiving the last frame sent to its delivery
        self.connected_at = time.monotonic()
        self.closed = False
        self.rate = RateMeter()
        self.interval = 0.0  # > 0: at most one frame per interval (a ?fps= cap)
        self.next_due = 0.0  # time.monotonic() before which a capped client takes no frame
        # Set by the client's sender only while it waits with nothing queued.
        self.direct: DirectWrite | None = None
        self.wake: Callable[[], None] = _nobody_waits  # the sender's, once it waits

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
            self.wake()

    def cap(self, max_fps: float | None) -> None:
        """Take at most ``max_fps`` frames a second (None: every frame)."""
        self.interval = 1 / max_fps if max_fps else 0.0

    def close(self) -> None:
        self.closed = True
        self.wake()

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
