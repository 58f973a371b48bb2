"""A camera as the hub knows it: what it is (`CameraInfo`), its newest frames, its
subscribers, and whether each frame it sends is fresh enough to show (`Freshness`).

Pure and synchronous.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from broker.core.frame import Frame
from broker.core.subscriber import RateMeter, Subscriber

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

    __slots__ = (
        "_best",
        "_best_before",
        "_late_best",
        "_late_since",
        "_window_start",
        "max_age",
        "newest",
        "settle",
        "window",
    )

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
        "arrivals",
        "browsers",
        "created_at",
        "departed",
        "derive_pending",
        "deriving",
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
        self.browsers = 0  # subscribers that take derived JPEGs (`Subscriber.browser`)
        # The newest frame waiting for its JPEG, and whether one is being made: at most
        # one derivation per camera at a time, the newest frame wins (`Hub.publish`).
        self.derive_pending: Frame | None = None
        self.deriving = False
        self.last_frame_at: float | None = None
        self.frames_received = 0
        self.online = False
        self.rate = RateMeter()
        self.subscribers: set[Subscriber] = set()
        self.departed = [0, 0, 0]  # frames sent, dropped, bytes sent of subscribers gone
        self.recent: deque[Frame] = deque()  # the retention window, oldest first
        # Woken once by the next frame, then forgotten (next.jpg waiters).
        self.arrivals: set[Callable[[], None]] = set()
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

    @property
    def format(self) -> str:
        """The format of the last frame, else the configured one."""
        return self.latest.format if self.latest is not None else self.info.format

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
