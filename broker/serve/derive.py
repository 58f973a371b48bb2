"""The JPEGs of cameras of raw formats (BMP, TIFF, LZ4) for outputs a browser shows as an
image: MJPEG, snapshot.jpg and next.jpg, the viewer page's tiles.

Made once per frame, only while someone watches such an output, and shared by all of
them: `Hub.publish` records the newest frame waiting (`Camera.derive_pending`) and calls
`Deriver.wake`; one task per camera then decodes and encodes in a worker thread
(`broker.core.transcode.to_jpeg`) and `Hub.publish_derived` offers the JPEG to the
browser subscribers. At most one derivation per camera is in flight; frames arriving
meanwhile replace the waiting one (the newest wins), so a camera faster than its JPEGs
gives its browser viewers fewer frames, never a backlog. At most `THREADS` derivations
run at once across cameras. The camera's own format goes out to its other subscribers
from `Hub.publish` itself, never waiting on any of this.

A frame that cannot be decoded is dropped from the browser outputs and counted
(``ingest.errors["derive"]`` via `Deriver.errors`), logged once per reason.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from broker.core.camera import Camera
from broker.core.frame import Frame
from broker.core.hub import Hub
from broker.core.transcode import TranscodeError, needs_jpeg, to_jpeg
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.derive")

THREADS = 2  # derivations at once, all cameras together: the machine's cores


class Deriver:
    def __init__(self, hub: Hub, errors: Counter[str], faults: Faults | None = None) -> None:
        self.hub = hub
        self.errors = errors  # the ingest error counts: "derive" when a frame is broken
        self.faults = faults if faults is not None else Faults()
        self.limiter = trio.CapacityLimiter(THREADS)
        self.derived = 0  # JPEGs made
        self._nursery: trio.Nursery | None = None
        self._locks: dict[str, trio.Lock] = {}  # per camera, for the on-demand path
        self._complaints = LogThrottle(log)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve derivations until cancelled; installs `wake` as the hub's ``derive``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.hub.derive = self.wake
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def wake(self, camera: Camera) -> None:
        """A frame waits for its JPEG and nothing derives for ``camera``: start."""
        if self._nursery is None or camera.deriving:
            return
        camera.deriving = True
        self._nursery.start_soon(self._derive, camera, name=f"derive {camera.id}")

    async def _derive(self, camera: Camera) -> None:
        try:
            while (frame := camera.derive_pending) is not None and camera.browsers:
                camera.derive_pending = None
                with self.faults.contain("derive"):
                    jpeg = await self.jpeg_of(camera, frame)
                    if jpeg is not None:
                        self.hub.publish_derived(camera, jpeg)
        finally:
            camera.deriving = False
            camera.derive_pending = None

    async def jpeg_of(self, camera: Camera, frame: Frame) -> Frame | None:
        """The browser image of ``frame``: itself when it is one, else its JPEG, made
        now in a worker thread unless made already; None when the frame is broken."""
        if not needs_jpeg(frame.format):
            return frame
        lock = self._locks.get(camera.id)
        if lock is None:
            lock = self._locks[camera.id] = trio.Lock()
        async with lock:  # a snapshot and the live path never derive the same twice
            if frame.derived is not None:
                return frame.derived
            try:
                jpeg = await trio.to_thread.run_sync(
                    to_jpeg,
                    frame.format,
                    frame.data,
                    frame.width,
                    frame.height,
                    frame.seq,
                    frame.captured_at,
                    limiter=self.limiter,
                )
            except TranscodeError as exc:
                self.errors["derive"] += 1
                self._complaints.warning(
                    "derive", "camera %s: no JPEG for a frame: %s", camera.id, exc
                )
                return None
            self.derived += 1
            derived = frame.derive(jpeg)
            if camera.latest is not frame:  # an older frame (next.jpg): not kept with it
                frame.derived = None
            return derived

    def forget(self, camera_id: str) -> None:
        """A camera is gone: drop its lock."""
        self._locks.pop(camera_id, None)
