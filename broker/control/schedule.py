"""Which scheduled presets fire between two moments of local time.

A camera's ``schedule`` lists ``{at = "HH:MM", preset = NAME}`` entries. The scheduler
looks at the clock every few seconds and applies each entry whose time of day lies in
``(previous check, this check]``: every crossing is seen exactly once, however late a
check runs. Times are naive local wall-clock datetimes, so when the clock goes back (the
end of daylight saving time, a manual correction) the caller keeps its previous moment
as the lower bound (`advance`) and nothing fires twice; when it jumps forward, the
entries jumped over fire.

Pure and synchronous.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from broker.config import ScheduleEntry

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
