"""The broker's state file: the settings operators applied to each camera.

JSON ``{"version": 1, "cameras": {"lobby": {"brightness": 60, ...}}}``. It holds only
the keys someone changed (a command, a preset, a schedule), not every setting a worker
reports, so the config stays the source of everything else. Written atomically (a temp
file in the same folder, then ``os.replace``) so a crash leaves the old file or the new
one, never half of one. A file that is missing, unreadable or corrupt is logged and
ignored: it must never stop the broker from starting.

`load`, `save` and `dumps` are the file, synchronous. `StateStore` is the persistence
job around it: it remembers what was applied, writes from a thread, one writer at a
time, retrying with backoff while the file cannot be written (the settings still apply
live meanwhile, and ``health`` says so), and hands the stored settings back for a
worker that says hello.
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

import trio

from broker.control.jobs import Jobs
from broker.protocol import settings as camera_settings
from broker.support.backoff import Backoff
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.state")
control_log = logging.getLogger("broker.control")  # the job's lines: part of control's log

RETRY, RETRY_MAX = 2.0, 60.0  # seconds before writing a failed state file again

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
        log.warning("state file %s: cannot read (%s); starting without stored settings", path, exc)
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.warning("state file %s: not JSON (%s); starting without stored settings", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        shown = data.get("version") if isinstance(data, dict) else type(data).__name__
        log.warning(
            "state file %s: not a version %d state file (got %r); ignored",
            path,
            STATE_VERSION,
            shown,
        )
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
    payload = {
        "version": STATE_VERSION,
        "cameras": {c: dict(s) for c, s in sorted(cameras.items()) if s},
    }
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


def unwritable(path: str) -> str | None:
    """Why the state file at ``path`` surely cannot be written, or None (it may be: a
    full disk, say, shows only when writing)."""
    if not path:
        return None
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"cannot write: {folder} is not a folder"
    if not os.access(folder, os.W_OK):
        return f"cannot write: no permission to write in {folder}"
    return None


class StateStore:
    """The settings operators applied, by camera, kept in the state file at ``path``
    ("" keeps them in memory only)."""

    def __init__(self, path: str, jobs: Jobs) -> None:
        self.path = path
        self.jobs = jobs
        self.stored = load(path)  # camera -> settings operators applied
        self._version = self._saved_version = 0
        self._saving = False
        # Why the file cannot be written (the last write failed, or it surely would);
        # None while it can.
        self.error: str | None = unwritable(path)
        self._complaints = LogThrottle(control_log)
        if self.stored:
            control_log.info(
                "state file %s: stored settings for %s", path, ", ".join(sorted(self.stored))
            )
        if self.error is not None:
            control_log.warning(
                "state file %s: %s; settings will apply but not survive a restart", path, self.error
            )

    def get(self, camera: str) -> dict[str, Any] | None:
        stored = self.stored.get(camera)
        return dict(stored) if stored else None

    def to_restore(
        self, camera: str, settings: Mapping[str, Any], supported: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The stored settings a worker reporting ``settings`` lacks and accepts."""
        stored = camera_settings.split(self.stored.get(camera, {}))[0]  # not the broker's own
        differing = {k: v for k, v in stored.items() if settings.get(k) != v}
        try:
            camera_settings.validate(differing, supported)
        except camera_settings.SettingsError as bad:
            control_log.warning(
                "camera %s: stored settings the worker does not accept, not restored: %s",
                camera,
                bad,
            )
            differing = {k: v for k, v in differing.items() if k not in bad.errors}
        return differing

    def remember(self, camera: str, changes: Mapping[str, Any]) -> None:
        """Store applied settings and write the state file soon (from a thread)."""
        if not changes:
            return
        self.stored.setdefault(camera, {}).update(changes)
        self._version += 1
        if self.path and not self._saving and self.jobs.running:
            self._saving = self.jobs.start("control:save-state", self._save)

    async def _save(self) -> None:
        """Write until the file holds the newest state; one writer at a time, so an older
        snapshot can never replace a newer one. A failed write (unwritable folder, disk
        full) is reported (log, health) and retried with backoff."""
        retry = Backoff(RETRY, RETRY_MAX)
        try:
            while self._saved_version < self._version:
                version = self._version
                snapshot = {camera: dict(values) for camera, values in self.stored.items()}
                try:
                    await trio.to_thread.run_sync(save, self.path, snapshot)
                except OSError as exc:
                    self._failed(exc)
                    await trio.sleep(retry.next())
                    continue
                self._written()
                self._saved_version = version
        finally:
            self._saving = False

    def save_now(self) -> None:
        """Write synchronously (at shutdown)."""
        try:
            save(self.path, self.stored)
        except OSError as exc:
            self._failed(exc)
        else:
            self._written()
            self._saved_version = self._version

    def _failed(self, exc: OSError) -> None:
        self.error = f"cannot write: {exc.strerror or exc}"
        self._complaints.warning(
            "state",
            "state file %s: cannot write (%s); settings apply but will not survive a restart",
            self.path,
            exc,
        )

    def _written(self) -> None:
        if self.error is not None:
            control_log.info("state file %s: written again", self.path)
        self.error = None

    @property
    def saved(self) -> bool:
        """True when the state file holds every change so far."""
        return self._saved_version == self._version

    def health(self) -> dict[str, Any]:
        """``ok`` is false while the last write failed (``error`` says why); settings
        then apply live but would not survive a restart."""
        health: dict[str, Any] = {"path": self.path, "ok": self.error is None}
        if self.error is not None:
            health["error"] = self.error
        return health
