"""The command round trip: send a command to a worker, wait for its reply or a failure.

A command is sent from whichever task asks (a WebSocket client, an HTTP request, the
scheduler, the on-demand logic) with a request id of its own on the wire, and waits for
the matching reply, always bounded by ``control.command_timeout``. A lost or restarted
worker fails its pending commands at once (`Commands.fail_all`). The answer is always a
`CommandResult`: `Commands.run` never raises for a camera-side problem, its ``error``
(a code of `broker.protocol.results.COMMAND_ERRORS`) says what went wrong.

The broker's own settings (`broker.protocol.settings.BROKER_KEYS`, analytics) are
validated with the rest, all or nothing; a change of only those needs no worker and
applies at once (``broker_applied``); in a change with worker keys they apply once the
worker accepted its part.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import trio
import zmq

from broker.config import Config
from broker.control.channel import Complaints, RouterChannel
from broker.control.workers import WorkerLink, Workers
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol.results import CommandResult

log = logging.getLogger("broker.control")

# A client's mistake is routine; a camera that fails to answer is not.
CLIENT_SIDE = ("invalid_settings", "unknown_preset", "unknown_command")


class Pending:
    """A command sent to a worker, waiting for its reply or for a failure."""

    __slots__ = ("changes", "command", "done", "failure", "own", "persist", "reply")

    def __init__(
        self,
        command: str,
        changes: dict[str, Any],
        persist: bool,
        own: dict[str, Any] | None = None,
    ) -> None:
        self.command = command
        self.changes = changes  # the validated settings of an update_settings
        self.own = own or {}  # its broker-owned keys, applied once the worker accepts
        self.persist = persist  # store them in the state file once applied
        self.done = trio.Event()
        self.reply: dict[str, Any] | None = None
        self.failure: tuple[str, str] | None = None  # (error code, message)

    def answer(self, reply: dict[str, Any]) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()

    def fail(self, error: str, message: str) -> None:
        if not self.done.is_set():
            self.failure = (error, message)
            self.done.set()


def _ignore(camera: str, changes: Mapping[str, Any]) -> None:
    pass


class Commands:
    """Commands in flight, by camera and wire request id, and their outcomes."""

    def __init__(
        self,
        config: Config,
        workers: Workers,
        complaints: Complaints,
        *,
        settings: Callable[[str], dict[str, Any] | None],
        is_camera: Callable[[str], bool],
        applied: Callable[[str, Mapping[str, Any]], None] = _ignore,
        broker_applied: Callable[[str, Mapping[str, Any], bool], None] | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.complaints = complaints
        self.settings = settings  # a camera's last known settings, for every answer
        self.is_camera = is_camera
        self.applied = applied  # an update_settings to persist was applied
        # The broker's own keys of an update_settings were validated and are to apply
        # now: (camera, them, whether to persist them).
        self.broker_applied = broker_applied or (
            lambda camera, own, persist: applied(camera, own) if persist else None
        )
        self.channel: RouterChannel | None = None  # set while bound
        self.results: Counter[str] = Counter()  # command outcomes: "ok" or the error code
        self.pending: dict[str, dict[str, Pending]] = {}  # camera -> wire request id -> it
        self._wire_ids = itertools.count(1)

    async def run(
        self,
        camera: str,
        command: str,
        settings: Mapping[str, Any] | None,
        request_id: str | None,
        persist: bool,
    ) -> CommandResult:
        """Run ``command`` on ``camera``'s worker; never raises for camera-side problems and
        never waits longer than ``control.command_timeout``. With ``persist``, settings
        it applies are handed to ``applied`` (the state file)."""

        def failed(error: str, message: str, errors: dict[str, str] | None = None) -> CommandResult:
            return self.result(
                camera, command, request_id, error=error, message=message, errors=errors
            )

        if command not in protocol.COMMANDS:
            return failed(
                "unknown_command",
                f"unknown command {command!r} (known: {', '.join(protocol.COMMANDS)})",
            )
        if not self.is_camera(camera):
            return failed("unknown_camera", f"no camera {camera!r}")
        link = self.workers.links.get(camera)
        channel = self.channel
        changes: dict[str, Any] = {}
        own: dict[str, Any] = {}  # the broker's own keys (analytics): applied here
        if command == "update_settings":
            try:
                changes = camera_settings.validate(
                    settings if settings is not None else {},
                    link.supported if link is not None and link.connected else None,
                )
            except camera_settings.SettingsError as bad:
                return failed(
                    "invalid_settings", f"camera {camera}: {bad}; nothing was changed", bad.errors
                )
            changes, own = camera_settings.split(changes)
            if own and not changes:  # no worker needed: every camera has these
                self.broker_applied(camera, own, persist)
                return self.result(
                    camera, command, request_id, success=True, message="update_settings done"
                )
        if link is None or not link.connected or channel is None:
            return failed("not_connected", self._why_not_connected(camera, link))
        wire_id = str(next(self._wire_ids))
        try:
            payload = protocol.encode(
                "command", request_id=wire_id, command=command, settings=changes
            )
        except protocol.ControlError as exc:  # validation let through what msgpack cannot carry
            return failed("invalid_settings", f"camera {camera}: {exc}; nothing was changed")
        waiting = self.pending.setdefault(camera, {})
        pending = waiting[wire_id] = Pending(command, changes, persist, own)
        timeout = self.config.control.command_timeout
        try:
            try:
                channel.send(link.identity, payload)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    self.workers.lose(link, "unreachable", "the worker disconnected")
                else:
                    pending.fail("timeout", f"the worker's control queue is full ({exc})")
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            waiting.pop(wire_id, None)
        if pending.failure is not None:
            error, message = pending.failure
            return failed(error, f"camera {camera}: {command}: {message}")
        if pending.reply is None:
            return failed(
                "timeout",
                f"camera {camera}: the worker did not answer {command} within {timeout:g} s",
            )
        reply = pending.reply
        if not reply["success"]:
            errors = reply.get("errors")  # a refused update_settings names each bad key
            message = f"camera {camera}: {command} failed in the worker: {reply['message']}"
            return failed("worker_error", message, errors if isinstance(errors, dict) else None)
        return self.result(
            camera, command, request_id, success=True, message=reply["message"] or f"{command} done"
        )

    async def preset(self, camera: str, preset: str, request_id: str | None) -> CommandResult:
        """``update_settings`` with the named preset's settings."""
        values = self.config.presets.get(preset)
        if values is None:
            known = ", ".join(sorted(self.config.presets)) or "none are configured"
            return self.result(
                camera,
                "update_settings",
                request_id,
                error="unknown_preset",
                message=f"no preset {preset!r} (known: {known})",
            )
        result = await self.run(camera, "update_settings", values, request_id, persist=True)
        if result.success:
            result.message = f"preset {preset} applied"
        return result

    def complete(self, camera: str, reply: dict[str, Any]) -> None:
        """A worker's reply: answers the command it belongs to."""
        pending = self.pending.get(camera, {}).get(reply["request_id"])
        if pending is None:
            # Most likely the answer to a command that already timed out.
            self.complaints.counts["unknown_request"] += 1
            self.complaints.throttle.warning(
                "unknown_request",
                "camera %s: a reply to no pending command (request %s); ignored",
                camera,
                reply["request_id"],
            )
            return
        if pending.command == "update_settings" and reply["success"]:
            if pending.persist:
                self.applied(camera, pending.changes)
            if pending.own:  # the broker's keys of a change the worker accepted
                self.broker_applied(camera, pending.own, pending.persist)
        pending.answer(reply)

    def fail_all(self, camera: str, error: str, message: str) -> None:
        for pending in self.pending.get(camera, {}).values():
            pending.fail(error, message)

    def waiting(self, camera: str) -> int:
        """How many commands to ``camera`` wait for their answer."""
        return len(self.pending.get(camera, ()))

    def result(
        self,
        camera: str,
        command: str,
        request_id: str | None,
        *,
        message: str,
        success: bool = False,
        error: str | None = None,
        errors: dict[str, str] | None = None,
    ) -> CommandResult:
        """The answer, counted by outcome and logged (a client's mistake at INFO)."""
        self.results[error or "ok"] += 1
        if error is not None:
            level = logging.INFO if error in CLIENT_SIDE else logging.WARNING
            log.log(level, "%s (%s)", message, error)
        else:
            level = logging.DEBUG if command == "get_status" else logging.INFO
            log.log(level, "camera %s: %s ok", camera, command)
        return CommandResult(
            success=success,
            message=message,
            settings=self.settings(camera) or {},
            request_id=str(request_id) if request_id is not None else uuid.uuid4().hex[:12],
            timestamp=time.time(),
            camera=camera,
            command=command,
            error=error,
            errors=errors,
        )

    def _why_not_connected(self, camera: str, link: WorkerLink | None) -> str:
        if link is None:
            return f"camera {camera}: no worker is connected to the control channel"
        silent = self.workers.clock() - link.last_seen
        return f"camera {camera}: its worker is not connected (last heard {silent:.0f} s ago)"
