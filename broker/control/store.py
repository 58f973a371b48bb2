"""The broker's state file: the settings operators applied to each camera.

JSON ``{"version": 1, "cameras": {"lobby": {"brightness": 60, ...}}}``. It holds only
the keys someone changed (a command, a preset, a schedule), not every setting a worker
reports, so the config stays the source of everything else. Written atomically (a temp
file in the same folder, then ``os.replace``) so a crash leaves the old file or the new
one, never half of one. A file that is missing, unreadable or corrupt is logged and
ignored: it must never stop the broker from starting.

Synchronous file I/O; callers on the event loop run `save` in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.protocol import settings as camera_settings

log = logging.getLogger("broker.state")

STATE_VERSION = 1

CameraSettings = dict[str, dict[str, Any]]


def load(path: str | os.PathLike[str]) -> CameraSettings:
    """The stored settings per camera; {} when ``path`` is "" or the file is missing or bad.
    Settings that are no longer valid are dropped one by one, with a warning."""
    if not os.fspath(path):
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("state file %s: cannot read (%s); starting without stored settings",
                    path, exc)  # fmt: skip
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.warning("state file %s: not JSON (%s); starting without stored settings", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        shown = data.get("version") if isinstance(data, dict) else type(data).__name__
        log.warning("state file %s: not a version %d state file (got %r); ignored",
                    path, STATE_VERSION, shown)  # fmt: skip
        return {}
    cameras = data.get("cameras")
    if not isinstance(cameras, dict):
        log.warning('state file %s: "cameras" must be an object; ignored', path)
        return {}
    stored: CameraSettings = {}
    for camera, values in cameras.items():
        if not isinstance(values, dict):
            log.warning("state file %s: camera %s: not an object; ignored", path, camera)
            continue
        stored[camera] = _valid(values, f"state file {path}: camera {camera}")
    return stored


def _valid(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The settings that still validate (a setting may have been renamed or narrowed)."""
    try:
        return camera_settings.validate(values)
    except camera_settings.SettingsError as bad:
        for key, problem in bad.errors.items():
            log.warning("%s: %s: %s; ignored", where, key, problem)
        return camera_settings.validate({k: v for k, v in values.items() if k not in bad.errors})


def dumps(cameras: Mapping[str, Mapping[str, Any]]) -> str:
    payload = {"version": STATE_VERSION,
               "cameras": {c: dict(s) for c, s in sorted(cameras.items()) if s}}  # fmt: skip
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def save(path: str | os.PathLike[str], cameras: Mapping[str, Mapping[str, Any]]) -> None:
    """Write atomically; raises OSError (the caller logs it: settings still apply live)."""
    if not os.fspath(path):
        return
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(dumps(cameras))
            file.flush()
            os.fsync(file.fileno())  # the rename must not land before the data
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
