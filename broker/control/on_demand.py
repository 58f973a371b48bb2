"""On-demand capture: a camera with ``on_demand`` streams exactly while someone watches
it (plus ``idle_after`` once the last viewer left).

One task per on-demand camera (`OnDemand.keep`) decides, so its start and stop commands
never overlap. It wakes when a viewer arrives or leaves (the hub's ``watched`` and
``unwatched`` hooks) and when its worker connects, is lost or reports streaming
(`OnDemand.wake`); a command that fails is retried after `RETRY`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import trio

from broker.config import CameraConfig
from broker.control.commands import Commands
from broker.control.workers import WorkerLink, Workers
from broker.core.camera import Camera
from broker.core.hub import Hub

log = logging.getLogger("broker.control")

RETRY = 1.0  # seconds before retrying a start/stop that failed


class OnDemand:
    def __init__(
        self,
        cameras: Sequence[CameraConfig],
        hub: Hub,
        workers: Workers,
        commands: Commands,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.cameras = {camera.id: camera for camera in cameras if camera.on_demand}
        self.hub = hub
        self.workers = workers
        self.commands = commands
        self.clock = clock
        self._changed = {camera_id: trio.Event() for camera_id in self.cameras}
        self._idle_since: dict[str, float] = {}  # camera -> when its last viewer left

    def viewers(self, camera: str) -> int:
        hub_camera = self.hub.cameras.get(camera)
        return len(hub_camera.subscribers) if hub_camera is not None else 0

    def wake(self, camera: str) -> None:
        """Wake the task of ``camera`` (if it is on demand) to look again."""
        event = self._changed.get(camera)
        if event is not None:
            event.set()

    def watched(self, camera: Camera) -> None:
        self.wake(camera.id)

    def unwatched(self, camera: Camera) -> None:
        if camera.id in self.cameras and not camera.subscribers:
            self._idle_since[camera.id] = self.clock()
            self.wake(camera.id)

    def hello(self, camera: str) -> None:
        """A worker said hello: unwatched now, it need not stream."""
        if camera in self.cameras and not self.viewers(camera):
            self._idle_since[camera] = -math.inf

    def decide(self, camera: CameraConfig, link: WorkerLink | None) -> tuple[str | None, float]:
        """The command ``camera`` needs now (start_stream, stop_stream or None), and until
        when no change is due unless something wakes its task."""
        if link is None:
            return None, math.inf
        watched = self.viewers(camera.id) > 0
        if watched and not link.streaming:
            return "start_stream", math.inf
        if not watched and link.streaming:
            deadline = self._idle_since.get(camera.id, -math.inf) + camera.idle_after
            return ("stop_stream" if self.clock() >= deadline else None), deadline
        return None, math.inf

    async def keep(self, camera: CameraConfig) -> None:
        """Keep ``camera`` streaming exactly while watched (plus ``idle_after``)."""
        while True:
            wake = self._changed[camera.id] = trio.Event()
            link = self.workers.connected(camera.id)
            want, deadline = self.decide(camera, link)
            if link is not None and want is not None:
                why = (
                    "a viewer arrived"
                    if want == "start_stream"
                    else (f"unwatched for {camera.idle_after:g} s")
                )
                log.info("camera %s: on demand: %s, %s", camera.id, why, want)
                result = await self.commands.run(camera.id, want, None, "on-demand", persist=False)
                if result.success and link.streaming == (want == "start_stream"):
                    continue
                deadline = self.clock() + RETRY  # don't hammer a failing worker
            with trio.move_on_at(deadline):
                await wake.wait()
