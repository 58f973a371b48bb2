"""The arrays of tables (cameras with their schedules, presets, tokens) and the rules
that relate fields: a delay cap under its delay, ids that must be unique or configured,
timeouts that must outlast two heartbeats.

A rule is skipped when a field it relates is already wrong: comparing against a bad
value would only add noise to the messages.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from broker.config.engine import Problems, check_unique, tables, unknown
from broker.config.fields import SPECS
from broker.config.model import (
    CameraConfig,
    ControlConfig,
    IngestConfig,
    ScheduleEntry,
    TokenConfig,
    WorkersConfig,
)
from broker.config.show import key, show, typed
from broker.protocol import settings as camera_settings
from broker.protocol.wire import CAMERA_ID

_SCHEDULE_ENTRY = '{at = "HH:MM", preset = "NAME"}'

# With slots, the classes' attributes are not the defaults: instances are.
_CONTROL, _INGEST, _WORKERS = ControlConfig(), IngestConfig(), WorkersConfig()

# --- cameras, presets and tokens ---


def cameras(
    data: Any, presets: dict[str, dict[str, Any]], problems: Problems
) -> tuple[list[dict[str, Any]], set[str]]:
    """The valid cameras' values, and every id given (valid or not)."""
    found = tables(CameraConfig, SPECS[CameraConfig], data, "cameras", problems)
    for i, camera in enumerate(found):
        if camera.get("source") and camera.get("device", "") != "":
            problems.add(f"cameras[{i}]", "must not set both source and device")
        if "schedule" in camera:
            camera["schedule"] = schedule(camera["schedule"], presets, i, problems)
    ids = [(f"cameras[{i}].id", c["id"]) for i, c in enumerate(found) if "id" in c]
    check_unique(ids, "camera id", problems)
    given = {c["id"] for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)}
    return found, given


def schedule(
    data: Any, presets: dict[str, dict[str, Any]], camera: int, problems: Problems
) -> tuple[ScheduleEntry, ...]:
    path = f"cameras[{camera}].schedule"
    if not isinstance(data, list):
        problems.add(path, f"must be an array of {_SCHEDULE_ENTRY}, got {typed(data)}")
        return ()
    entries = []
    for i, entry in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.add(where, f"must be a table {_SCHEDULE_ENTRY}, got {typed(entry)}")
            continue
        for name in entry.keys() - {"at", "preset"}:
            problems.add(f"{where}.{key(name)}", unknown(name, ["at", "preset"]))
        at, preset = _time_of_day(entry.get("at")), entry.get("preset")
        if at is None:
            shown = typed(entry["at"]) if "at" in entry else "nothing"
            problems.add(f"{where}.at", f'must be a time of day such as "07:30", got {shown}')
        if preset not in presets:
            known = ", ".join(presets) if presets else "there are none"
            shown = show(preset) if "preset" in entry else "nothing"
            problems.add(f"{where}.preset", f"must name a preset ({known}), got {shown}")
        if at is not None and preset in presets:
            entries.append(ScheduleEntry(at, preset))
    return tuple(entries)


def _time_of_day(value: Any) -> dt.time | None:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        hour, minute, second, *_ = [int(part) for part in value.split(":")] + [0]
        try:
            return dt.time(hour, minute, second)
        except ValueError:
            return None
    return None


def presets(data: Any, problems: Problems) -> dict[str, dict[str, Any]]:
    """``[presets.NAME]`` tables of camera settings, each checked like a settings change."""
    if not isinstance(data, dict):
        problems.add("presets", f"must be a table of [presets.NAME] tables, got {typed(data)}")
        return {}
    found = {}
    for name, settings in data.items():
        path = f"presets.{key(name)}"
        if not isinstance(settings, dict):
            problems.add(path, f"must be a table of camera settings, got {typed(settings)}")
            continue
        if not CAMERA_ID.fullmatch(name):
            problems.add(path, f"a preset name must match {CAMERA_ID.pattern}")
            continue
        try:
            found[name] = camera_settings.validate(settings)
        except camera_settings.SettingsError as bad:
            for setting, problem in bad.errors.items():
                problems.add(f"{path}.{key(setting)}", problem)
    return found


def tokens(data: Any, problems: Problems) -> list[dict[str, Any]]:
    found = tables(TokenConfig, SPECS[TokenConfig], data, "tokens", problems)
    items = [(f"tokens[{i}].token", t["token"]) for i, t in enumerate(found) if "token" in t]
    check_unique(items, "token", problems)
    return found


# --- rules that relate fields ---


def check_token_cameras(tokens: list[dict[str, Any]], ids: set[str], problems: Problems) -> None:
    if "cameras" in problems.paths:
        return
    for i, token in enumerate(tokens):
        for j, camera in enumerate(token.get("cameras", ())):
            if camera not in ids:
                known = ", ".join(sorted(ids)) if ids else "there are none"
                problem = f"must name a configured camera ({known}), got {show(camera)}"
                problems.add(f"tokens[{i}].cameras[{j}]", problem)


def check_heartbeat(control: dict[str, Any], problems: Problems) -> None:
    if {"control.heartbeat_interval", "control.lost_after"} & problems.paths:
        return
    interval = control.get("heartbeat_interval", _CONTROL.heartbeat_interval)
    lost = control.get("lost_after", _CONTROL.lost_after)
    if lost < 2 * interval:
        problems.add(
            "control.lost_after",
            f"must be at least twice heartbeat_interval ({show(interval)}), got {show(lost)}",
        )


def check_max_cameras(ingest: dict[str, Any], configured: int, problems: Problems) -> None:
    limit = ingest.get("max_cameras", _INGEST.max_cameras)
    if "ingest.max_cameras" not in problems.paths and configured > limit:
        problems.add(
            "ingest.max_cameras",
            f"must be at least the number of configured cameras ({configured}), got {limit}",
        )


def check_orphan_timeout(
    workers: dict[str, Any], control: dict[str, Any], problems: Problems
) -> None:
    if {"workers.orphan_timeout", "control.heartbeat_interval"} & problems.paths:
        return
    timeout = workers.get("orphan_timeout", _WORKERS.orphan_timeout)
    interval = control.get("heartbeat_interval", _CONTROL.heartbeat_interval)
    if timeout < 2 * interval:  # a worker must not leave a broker that is merely between beats
        problems.add(
            "workers.orphan_timeout",
            f"must be at least twice control.heartbeat_interval ({show(interval)}), "
            f"got {show(timeout)}",
        )


def check_restart_delays(workers: dict[str, Any], problems: Problems) -> None:
    if {"workers.restart_delay", "workers.restart_delay_max"} & problems.paths:
        return  # one of them is already wrong; comparing them would only add noise
    delay = workers.get("restart_delay", _WORKERS.restart_delay)
    cap = workers.get("restart_delay_max", _WORKERS.restart_delay_max)
    if cap < delay:
        default = "" if "restart_delay_max" in workers else " (the default)"
        problems.add(
            "workers.restart_delay_max",
            f"must be at least restart_delay ({show(delay)}), got {show(cap)}{default}",
        )


def check_default_camera(server: dict[str, Any], ids: set[str], problems: Problems) -> None:
    name = server.get("default_camera", "")
    if not name or "cameras" in problems.paths or name in ids:
        return
    known = ", ".join(sorted(ids)) if ids else "there are none"
    problems.add(
        "server.default_camera", f"must name a configured camera ({known}), got {show(name)}"
    )
