"""The commands a broker sends its worker (`broker.protocol.control.COMMANDS`), each
run between two frames and answered once: ``(success, message, extra reply fields)``.

They act on the `Worker` through its own methods (open and close the source, apply
settings); the frame loop, its pacing and the reply itself stay in `cameras.worker`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.protocol.settings import Settings, SettingsError, validate

if TYPE_CHECKING:
    from cameras.worker import Worker

log = logging.getLogger("camera-worker")

SIZE_KEYS = ("width", "height")
Reply = tuple[bool, str, dict[str, Any]]  # success, message, extra reply fields
Handler = Callable[["Worker", Settings], Reply]


def run(worker: Worker, command: Mapping[str, Any]) -> Reply:
    """The answer to one decoded command (`cameras.link.ControlLink.receive`)."""
    name = command["command"]
    if "error" in command:  # too malformed to run, but owed an answer
        return False, command["error"], {}
    try:
        return HANDLERS[name](worker, command["settings"])
    except Exception as exc:  # a bug must cost one command, not the camera
        log.exception("camera %s: %s failed", worker.camera, name)
        return False, f"internal error: {exc!r}", {}


def update_settings(worker: Worker, changes: Settings) -> Reply:
    """All or nothing; width and height may come alone once the size is known."""
    try:
        clean = validate(changes, worker.supported)
        if ("width" in clean) != ("height" in clean):
            size = worker.output_size()
            if size is None:
                missing = "height" if "width" in clean else "width"
                raise SettingsError(
                    {missing: "not known before the first frame: give width and height together"}
                )
            clean = {**dict(zip(SIZE_KEYS, size, strict=True)), **clean}
    except SettingsError as exc:
        return False, f"invalid settings, nothing changed: {exc}", {"errors": exc.errors}
    current = worker.current_settings()
    changed = {key: value for key, value in clean.items() if current.get(key) != value}
    if not changed:
        return True, "no change", {}
    error = worker.apply(changed)
    message = "changed " + ", ".join(changed)
    return True, message + (f"; the source failed: {error}" if error else ""), {}


def start_stream(worker: Worker, _settings: Settings) -> Reply:
    if worker.streaming:
        return True, "already streaming", {}
    worker.streaming = True
    worker.backoff.reset()
    error = worker.open_source()
    if error:
        return False, f"cannot open the source: {error}; retrying", {}
    return True, "streaming", {}


def stop_stream(worker: Worker, _settings: Settings) -> Reply:
    if not worker.streaming:
        return True, "already stopped", {}
    worker.streaming = False
    worker.close_source()  # a device's LED goes off
    return True, "stopped", {}


def get_status(worker: Worker, _settings: Settings) -> Reply:
    if not worker.streaming:
        state = "stopped"
    elif worker.opened:
        state = "streaming"
    else:
        state = f"streaming, but the source failed; retrying in {worker.retry_wait():.0f} s"
    return True, f"{state}; {worker.seq} frames published, {worker.dropped} dropped", {}


def restart_camera(worker: Worker, _settings: Settings) -> Reply:
    worker.close_source()
    if not worker.streaming:
        return True, "not streaming: the source opens on start_stream", {}
    worker.backoff.reset()
    error = worker.open_source()
    if error:
        return False, f"cannot reopen the source: {error}; retrying", {}
    return True, "restarted", {}


HANDLERS: dict[str, Handler] = {
    "update_settings": update_settings,
    "start_stream": start_stream,
    "stop_stream": stop_stream,
    "get_status": get_status,
    "restart_camera": restart_camera,
}
