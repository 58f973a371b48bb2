"""Scheduled presets (broker/schedule.py): every crossing of an ``at`` fires exactly once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from broker.config import ScheduleEntry
from broker.control.schedule import advance, crossings

DAY = ScheduleEntry(dt.time(7, 0), "day")
NIGHT = ScheduleEntry(dt.time(19, 30), "night")
SCHEDULE = (DAY, NIGHT)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2025, 3, day, hour, minute, second)


def presets(
    start: dt.datetime, end: dt.datetime, entries: Sequence[ScheduleEntry] = SCHEDULE
) -> list[str]:
    return [entry.preset for _, entry in crossings(entries, start, end)]


def test_nothing_between_entries() -> None:
    assert presets(at(1, 8), at(1, 19, 29, 59)) == []


def test_the_start_is_exclusive_and_the_end_inclusive() -> None:
    assert presets(at(1, 19, 29, 55), at(1, 19, 30)) == ["night"]
    assert presets(at(1, 19, 30), at(1, 19, 30, 5)) == []  # fired by the previous check


def test_consecutive_checks_fire_each_crossing_exactly_once() -> None:
    start = at(1, 0)
    fired = []
    for _ in range(48 * 60 * 12):  # two days of checks every 5 s
        end = start + dt.timedelta(seconds=5)
        fired += [(when, entry.preset) for when, entry in crossings(SCHEDULE, start, end)]
        start = advance(start, end)
    assert fired == [
        (at(1, 7), "day"),
        (at(1, 19, 30), "night"),
        (at(2, 7), "day"),
        (at(2, 19, 30), "night"),
    ]


def test_a_late_check_still_fires_what_it_passed_in_order() -> None:
    assert presets(at(1, 6, 59), at(1, 19, 31)) == ["day", "night"]


def test_crossing_midnight() -> None:
    late = ScheduleEntry(dt.time(23, 59, 58), "late")
    early = ScheduleEntry(dt.time(0, 0), "midnight")
    assert presets(at(1, 23, 59, 57), at(2, 0, 0, 2), (early, late)) == ["late", "midnight"]


def test_a_long_gap_applies_at_most_one_day() -> None:
    found = crossings(SCHEDULE, at(1, 12), at(5, 12))
    assert [(when, entry.preset) for when, entry in found] == [
        (at(4, 19, 30), "night"),
        (at(5, 7), "day"),
    ]


def test_entries_at_the_same_time_keep_their_order() -> None:
    first, second = ScheduleEntry(dt.time(9), "a"), ScheduleEntry(dt.time(9), "b")
    assert presets(at(1, 8), at(1, 10), (second, first)) == ["b", "a"]


def test_the_clock_going_back_fires_nothing_twice() -> None:
    # 02:30 fires, then the clock falls back an hour (end of summer time) and passes 02:30
    # again: the lower bound stays at the latest moment seen, so it fires once.
    entry = (ScheduleEntry(dt.time(2, 30), "x"),)
    previous = at(1, 2, 29, 58)
    assert presets(previous, at(1, 2, 30, 3), entry) == ["x"]
    previous = advance(previous, at(1, 2, 30, 3))
    back = at(1, 1, 45)
    assert presets(previous, back, entry) == []
    previous = advance(previous, back)
    assert previous == at(1, 2, 30, 3)
    assert presets(previous, at(1, 2, 31), entry) == []


def test_the_clock_jumping_forward_fires_what_it_skipped() -> None:
    # Spring forward: 02:00 becomes 03:00; an entry at 02:30 still fires.
    entry = (ScheduleEntry(dt.time(2, 30), "x"),)
    assert presets(at(1, 1, 59, 58), at(1, 3, 0, 3), entry) == ["x"]


def test_empty_schedule_or_empty_interval() -> None:
    assert crossings((), at(1, 0), at(2, 0)) == []
    assert crossings(SCHEDULE, at(1, 19, 30), at(1, 19, 30)) == []
    assert crossings(SCHEDULE, at(1, 20), at(1, 19)) == []
