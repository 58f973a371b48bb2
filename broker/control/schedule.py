"""Which scheduled presets fire between two moments of local time.

A camera's ``schedule`` lists ``{at = "HH:MM", preset = NAME}`` entries. The scheduler
looks at the clock every few seconds and applies each entry whose time of day lies in
``(previous check, this check]``: every crossing is seen exactly once, however late a
check runs. Times are naive local wall-clock datetimes, so when the clock goes back (the
end of daylight saving time, a manual correction) the caller keeps its previous moment
as the lower bound (`advance`) and nothing fires twice; when it jumps forward, the
entries jumped over fire.

`crossings` and `advance` are pure and synchronous; `Scheduler` is the job that looks
at the clock and applies what is due.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from broker.config import CameraConfig, ScheduleEntry
from broker.control.jobs import Jobs
from broker.protocol.results import CommandResult

log = logging.getLogger("broker.control")

CHECK_EVERY = 5.0  # seconds between looks at the wall clock

# After a long gap (a suspended machine) only the last day's crossings are worth applying.
MAX_LOOKBACK = dt.timedelta(days=1)


def crossings(
    entries: Sequence[ScheduleEntry], start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, ScheduleEntry]]:
    """Each entry's moments ``when`` with ``start < when <= end``, oldest first; entries at
    the same moment keep their schedule order."""
    if end <= start or not entries:
        return []
    start = max(start, end - MAX_LOOKBACK)
    found = []
    day = start.date()
    while day <= end.date():
        for index, entry in enumerate(entries):
            when = dt.datetime.combine(day, entry.at)
            if start < when <= end:
                found.append((when, index, entry))
        day += dt.timedelta(days=1)
    found.sort(key=lambda item: (item[0], item[1]))
    return [(when, entry) for when, _, entry in found]


def advance(previous: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The lower bound for the next check: never moves back with the wall clock."""
    return max(previous, now)


class Scheduler:
    """Applies each camera's scheduled presets as the local time crosses their ``at``.
    A preset due while the camera's worker is not connected is stored (``remember``) and
    applies when the worker next says hello, like any stored setting."""

    def __init__(
        self,
        cameras: Sequence[CameraConfig],
        presets: Mapping[str, Mapping[str, Any]],
        apply_preset: Callable[[str, str, str | None], Awaitable[CommandResult]],
        remember: Callable[[str, Mapping[str, Any]], None],
        jobs: Jobs,
    ) -> None:
        self.cameras = [camera for camera in cameras if camera.schedule]
        self.presets = presets
        self.apply_preset = apply_preset
        self.remember = remember
        self.jobs = jobs
        self.wall_clock: Callable[[], dt.datetime] = dt.datetime.now  # local time
        self.check_every = CHECK_EVERY

    async def run(self) -> None:
        previous = self.wall_clock()
        while True:
            await trio.sleep(self.check_every)
            now = self.wall_clock()
            for camera in self.cameras:
                due = [entry.preset for _, entry in crossings(camera.schedule, previous, now)]
                if due:
                    self.jobs.start("control:apply-scheduled", self.apply, camera.id, due)
            previous = advance(previous, now)

    async def apply(self, camera: str, presets: list[str]) -> None:
        for preset in presets:
            result = await self.apply_preset(camera, preset, "schedule")
            if result.error == "not_connected":
                self.remember(camera, self.presets[preset])
                log.info(
                    "camera %s: scheduled preset %s stored; it applies when the worker connects",
                    camera,
                    preset,
                )
            elif result.success:
                log.info("camera %s: scheduled preset %s applied", camera, preset)
