"""The control plane: commands and settings for camera workers over a ZeroMQ ROUTER.

Each worker connects a DEALER whose routing id is its camera id and speaks the msgpack
messages of `broker.protocol.control`. Here one task receives everything from the ROUTER and
updates a `WorkerLink` per camera; commands are sent from whichever task asks (a
WebSocket client, an HTTP request, the scheduler, the on-demand logic) and wait for the
matching reply, always bounded by ``control.command_timeout``.

What the rest of the broker uses is `Control`: ``command``, ``apply_preset``,
``settings``, ``supported``, ``connected``, ``camera_status``, ``health`` and the
`EventBus` ``events``. ``command`` never raises for a camera-side problem; it answers
with a `CommandResult` whose ``error`` says what went wrong.

Liveness: both sides send a heartbeat every ``heartbeat_interval``; a worker silent for
``lost_after`` is lost (event ``worker_lost``) and its pending commands fail at once, as
they do when the supervisor reports that the worker process exited. A hello with a new
pid is a restarted worker (``worker_restarted``). On every hello the broker restores the
settings stored in the state file, and tells an on-demand worker whether to stream.

Every background job (heartbeats, schedules, each on-demand camera, each after-hello
restore, each state save) runs inside a boundary of `Faults`: a bug costs that job a
restart (or that one run), never the broker. A state file that cannot be written does
not stop anything either: settings still apply live, and ``health`` says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq

from broker.config import CameraConfig, Config
from broker.control import schedule
from broker.control import store as state
from broker.core.events import EventBus
from broker.core.hub import Camera, Hub
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol.results import CommandResult
from broker.protocol.wire import CAMERA_ID
from broker.support.backoff import Backoff
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.zmqtrio import bound_socket

log = logging.getLogger("broker.control")

# The longest the receiving task sleeps on the ZMQ FD before looking again: a backstop
# for a missed edge (see RouterChannel); normally a message or a kick wakes it at once.
FD_WAIT_BOUND = 1.0
# Peers sending a larger frame are disconnected by ZeroMQ itself; messages between the
# protocol's limit and this one are received, counted and dropped.
MAX_FRAME_BYTES = 1024 * 1024
SCHEDULE_CHECK = 5.0  # seconds between looks at the wall clock for scheduled presets
ON_DEMAND_RETRY = 1.0  # seconds before retrying a start/stop that failed
STATE_RETRY, STATE_RETRY_MAX = 2.0, 60.0  # seconds before writing a failed state file again
HEARTBEAT = protocol.encode("heartbeat")
HELLO_REQUEST = protocol.encode("hello_request")
class _Pending:
    """A command sent to a worker, waiting for its reply or for a failure."""

    __slots__ = ("changes", "command", "done", "failure", "persist", "reply")

    def __init__(self, command: str, changes: dict[str, Any], persist: bool) -> None:
        self.command = command
        self.changes = changes  # the validated settings of an update_settings
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


@dataclass(eq=False)
class WorkerLink:
    """What the broker knows of one camera's worker, from its hello, heartbeats and replies."""

    camera: str
    identity: bytes  # its ZMQ routing id (the camera id)
    pid: int = 0
    device: str = ""  # the worker's description of its source
    supported: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    streaming: bool = False
    connected: bool = False  # false once lost or exited, until its next hello
    connected_at: float = 0.0  # trio clock
    last_seen: float = 0.0  # trio clock: the last message of any kind
    pending: dict[str, _Pending] = field(default_factory=dict)  # by wire request id

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "connected": self.connected, "pid": self.pid, "device": self.device,
            "streaming": self.streaming, "last_seen_s": round(now - self.last_seen, 1),
            "pending_commands": len(self.pending),
        }  # fmt: skip


class RouterChannel:
    """The broker's ROUTER socket: exactly one task receives, any task may send.

    Sends are synchronous (``NOBLOCK``), so they need no waiting, but the ZMQ FD is
    edge-triggered and any call on the socket, a send included, may consume the edge
    that says a message arrived. If a send from another task ate the edge while the
    receiver sleeps on the FD, the receiver would not wake although a message waits.
    So after every send we read ``EVENTS``: when it shows ``POLLIN`` we cancel the
    receiver's wait (a "kick") and it goes back to receiving. The wait is also bounded
    (`FD_WAIT_BOUND`) as a backstop, so no missed edge can stall control for long.
    """

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self._fd = socket.getsockopt(zmq.FD)
        self._waiting: trio.CancelScope | None = None

    async def receive(self) -> list[bytes]:
        await trio.lowlevel.checkpoint_if_cancelled()
        socket = self.socket
        while True:
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    continue
                # Nothing is lost if this wait is cancelled: no message was taken yet.
                with trio.move_on_after(FD_WAIT_BOUND) as self._waiting:
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._waiting = None
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return parts

    def send(self, identity: bytes, payload: bytes) -> None:
        """Send now or raise `zmq.ZMQError` (EHOSTUNREACH: no such peer; EAGAIN: its queue
        is full). Never blocks."""
        try:
            self.socket.send_multipart([identity, payload], zmq.NOBLOCK)
        finally:
            if self._waiting is not None and self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._waiting.cancel()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self.socket.close(linger=0)


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


def bind(context: zmq.Context, endpoints: Sequence[str]) -> tuple[zmq.Socket, list[str]]:
    """A ROUTER bound on ``endpoints``, with the endpoints actually bound."""
    return bound_socket(context, zmq.ROUTER, endpoints, {
        zmq.ROUTER_MANDATORY: 1,  # a send to a gone worker fails at once
        zmq.ROUTER_HANDOVER: 1,  # a restarted worker takes over its id
        zmq.MAXMSGSIZE: MAX_FRAME_BYTES,
    })  # fmt: skip


class Control:
    """The broker side of the control channel. `bind`, then run `run` in a nursery."""

    def __init__(
        self, config: Config, hub: Hub, events: EventBus | None = None,
        faults: Faults | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.faults = faults if faults is not None else Faults()
        self.hub = hub
        self.events = events if events is not None else EventBus()
        self.links: dict[str, WorkerLink] = {}
        self.errors: Counter[str] = Counter()  # malformed or refused messages, by reason
        self.results: Counter[str] = Counter()  # command outcomes: "ok" or the error code
        self.endpoints: list[str] = []
        self.wall_clock: Callable[[], dt.datetime] = dt.datetime.now  # local time, schedules
        self.schedule_check = SCHEDULE_CHECK
        self._channel: RouterChannel | None = None
        self._nursery: trio.Nursery | None = None
        self._complaints = LogThrottle(log)
        self._wire_ids = itertools.count(1)
        self._state_file = config.control.state_file
        self._stored = state.load(self._state_file)  # camera → settings operators applied
        self._state_version = self._saved_version = 0
        self._saving = False
        # Why the state file cannot be written (the last write failed, or it surely
        # would); None while it can.
        self._state_error: str | None = unwritable(self._state_file)
        self._on_demand = {camera.id: camera for camera in config.cameras if camera.on_demand}
        self._demand_changed = {camera_id: trio.Event() for camera_id in self._on_demand}
        self._idle_since: dict[str, float] = {}  # on-demand camera → when its last viewer left
        hub.hooks.watched = self._watched
        hub.hooks.unwatched = self._unwatched
        hub.hooks.online = self._online
        hub.hooks.offline = self._offline
        if self._stored:
            log.info("state file %s: stored settings for %s", self._state_file,
                     ", ".join(sorted(self._stored)))  # fmt: skip
        if self._state_error is not None:
            log.warning("state file %s: %s; settings will apply but not survive a restart",
                        self._state_file, self._state_error)  # fmt: skip

    # -- running ---------------------------------------------------------------

    def bind(self, context: zmq.Context, endpoints: Sequence[str]) -> list[str]:
        """Bind the ROUTER (raises `zmq.ZMQError`, e.g. address in use); returns the
        endpoints bound, ``tcp://host:*`` resolved to its port."""
        socket, self.endpoints = bind(context, endpoints)
        self._channel = RouterChannel(socket)
        return self.endpoints

    async def run(
        self, *, task_status: trio.TaskStatus[Control] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive, heartbeat, schedule and start/stop on-demand cameras until cancelled;
        closes the socket on the way out."""
        channel = self._channel
        if channel is None:
            raise RuntimeError("Control.bind must be called before Control.run")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                keep_running = self.faults.keep_running
                nursery.start_soon(self._receive, channel, name="control:receive")
                nursery.start_soon(keep_running, "control:heartbeats", self._keep_alive,
                                   name="control:heartbeats")  # fmt: skip
                if any(camera.schedule for camera in self.config.cameras):
                    nursery.start_soon(keep_running, "control:schedules", self._run_schedules,
                                       name="control:schedules")  # fmt: skip
                for camera in self._on_demand.values():
                    nursery.start_soon(keep_running, "control:on-demand", self._keep_demand,
                                       camera, name=f"on-demand:{camera.id}")  # fmt: skip
                task_status.started(self)
        finally:
            self._nursery = None
            channel.close()
            self._channel = None
            if not self.state_saved:  # a change made just before shutdown
                self._save_now()

    # -- the API -----------------------------------------------------------------

    async def command(
        self,
        camera: str,
        command: str,
        settings: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> CommandResult:
        """Run ``command`` on ``camera``'s worker; never raises for camera-side problems and
        never waits longer than ``control.command_timeout``."""
        return await self._command(camera, command, settings, request_id, persist=True)

    async def apply_preset(
        self, camera: str, preset: str, request_id: str | None = None
    ) -> CommandResult:
        """``update_settings`` with the named preset's settings."""
        values = self.config.presets.get(preset)
        if values is None:
            known = ", ".join(sorted(self.config.presets)) or "none are configured"
            return self._response(camera, "update_settings", request_id,
                                  error="unknown_preset",
                                  message=f"no preset {preset!r} (known: {known})")  # fmt: skip
        result = await self.command(camera, "update_settings", values, request_id)
        if result.success:
            result.message = f"preset {preset} applied"
        return result

    def settings(self, camera: str) -> dict[str, Any] | None:
        """The last known settings: from the worker (hello or reply), else the stored ones."""
        link = self.links.get(camera)
        if link is not None and link.settings:
            return dict(link.settings)
        stored = self._stored.get(camera)
        return dict(stored) if stored else None

    def supported(self, camera: str) -> dict[str, dict[str, Any]] | None:
        link = self.links.get(camera)
        return dict(link.supported) if link is not None else None

    def connected(self, camera: str) -> bool:
        link = self.links.get(camera)
        return link is not None and link.connected

    def streaming(self, camera: str) -> bool | None:
        """Whether the worker captures and publishes; None when no worker ever said hello."""
        link = self.links.get(camera)
        return link.streaming if link is not None else None

    def camera_status(self, camera: str) -> dict[str, Any]:
        """The control view of one camera, for /api/cameras and list_cameras."""
        link = self.links.get(camera)
        return {
            "connected": link is not None and link.connected,
            "streaming": link.streaming if link is not None else None,
            "on_demand": camera in self._on_demand,
            "settings": self.settings(camera) or {},
        }

    def health(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "endpoints": list(self.endpoints),
            "workers_connected": sum(link.connected for link in self.links.values()),
            "workers": {c: link.describe(now) for c, link in sorted(self.links.items())},
            "errors": dict(self.errors),
            "commands": dict(self.results),
            "state_file": self.state_file_health(),
        }

    def state_file_health(self) -> dict[str, Any]:
        """``ok`` is false while the last write failed (``error`` says why); settings
        then apply live but would not survive a restart."""
        health: dict[str, Any] = {"path": self._state_file, "ok": self._state_error is None}
        if self._state_error is not None:
            health["error"] = self._state_error
        return health

    def silent_for(self, camera: str) -> float | None:
        """Seconds since ``camera``'s worker last sent anything on control (a paused
        worker heartbeats too); None before its first hello. For the supervisor."""
        link = self.links.get(camera)
        return None if link is None else trio.current_time() - link.last_seen

    def worker_exited(self, camera: str, pid: int, how: str = "exited") -> None:
        """The supervisor saw ``camera``'s worker process ``pid`` exit: fail its pending
        commands now rather than at their timeout."""
        link = self.links.get(camera)
        if link is None or link.pid != pid:
            return  # it never said hello, or a newer worker already did
        if link.connected:
            self._lose(link, "exited", f"the worker process exited ({how})")

    # -- commands ----------------------------------------------------------------

    async def _command(
        self,
        camera: str,
        command: str,
        settings: Mapping[str, Any] | None,
        request_id: str | None,
        persist: bool,
    ) -> CommandResult:
        def failed(
            error: str, message: str, errors: dict[str, str] | None = None
        ) -> CommandResult:
            return self._response(camera, command, request_id, error=error, message=message,
                                  errors=errors)  # fmt: skip

        if command not in protocol.COMMANDS:
            return failed(
                "unknown_command",
                f"unknown command {command!r} (known: {', '.join(protocol.COMMANDS)})",
            )
        if not self._is_camera(camera):
            return failed("unknown_camera", f"no camera {camera!r}")
        link = self.links.get(camera)
        if link is None or not link.connected or self._channel is None:
            return failed("not_connected", self._why_not_connected(camera, link))
        changes: dict[str, Any] = {}
        if command == "update_settings":
            try:
                changes = camera_settings.validate(
                    settings if settings is not None else {}, link.supported
                )
            except camera_settings.SettingsError as bad:
                return failed("invalid_settings", f"camera {camera}: {bad}; nothing was changed",
                              bad.errors)  # fmt: skip
        wire_id = str(next(self._wire_ids))
        try:
            payload = protocol.encode("command", request_id=wire_id, command=command,
                                      settings=changes)  # fmt: skip
        except protocol.ControlError as exc:  # validation let through what msgpack cannot carry
            return failed("invalid_settings", f"camera {camera}: {exc}; nothing was changed")
        pending = link.pending[wire_id] = _Pending(command, changes, persist)
        timeout = self.config.control.command_timeout
        try:
            try:
                self._channel.send(link.identity, payload)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    self._lose(link, "unreachable", "the worker disconnected")
                else:
                    pending.fail("timeout", f"the worker's control queue is full ({exc})")
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            link.pending.pop(wire_id, None)
        if pending.failure is not None:
            error, message = pending.failure
            return failed(error, f"camera {camera}: {command}: {message}")
        if pending.reply is None:
            return failed("timeout", f"camera {camera}: the worker did not answer {command} "
                          f"within {timeout:g} s")  # fmt: skip
        reply = pending.reply
        if not reply["success"]:
            errors = reply.get("errors")  # a refused update_settings names each bad key
            message = f"camera {camera}: {command} failed in the worker: {reply['message']}"
            return failed("worker_error", message, errors if isinstance(errors, dict) else None)
        return self._response(camera, command, request_id, success=True,
                              message=reply["message"] or f"{command} done")  # fmt: skip

    def _response(
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
        self.results[error or "ok"] += 1
        if error is not None:
            # A client's mistake is routine; a camera that fails to answer is not.
            client_side = error in ("invalid_settings", "unknown_preset", "unknown_command")
            log.log(logging.INFO if client_side else logging.WARNING, "%s (%s)", message, error)
        else:
            level = logging.DEBUG if command == "get_status" else logging.INFO
            log.log(level, "camera %s: %s ok", camera, command)
        return CommandResult(
            success=success, message=message, settings=self.settings(camera) or {},
            request_id=str(request_id) if request_id is not None else uuid.uuid4().hex[:12],
            timestamp=time.time(), camera=camera, command=command, error=error, errors=errors,
        )  # fmt: skip

    def _why_not_connected(self, camera: str, link: WorkerLink | None) -> str:
        if link is None:
            return f"camera {camera}: no worker is connected to the control channel"
        silent = trio.current_time() - link.last_seen
        return f"camera {camera}: its worker is not connected (last heard {silent:.0f} s ago)"

    def _is_camera(self, camera: str) -> bool:
        return camera in self.hub.cameras or camera in self.links

    # -- receiving ----------------------------------------------------------------

    async def _receive(self, channel: RouterChannel) -> None:
        while True:
            parts = await channel.receive()
            # A last resort: a bug in handling one message costs that message only.
            with self.faults.contain("control"):
                self._handle(parts)

    def _handle(self, parts: list[bytes]) -> None:
        """One message from the ROUTER; anything malformed is counted by reason (the
        codec's `ControlError.reason` for what it refuses) and dropped."""
        if len(parts) != 2:
            self._malformed("bad_frames", f"a message of {len(parts) - 1} frames (expected 1)")
            return
        identity, payload = parts
        camera = identity.decode("ascii", "replace")
        if not CAMERA_ID.fullmatch(camera):
            self._malformed("bad_identity", f"routing id {identity[:40]!r} is not a camera id")
            return
        try:
            message = protocol.decode(payload)
        except protocol.ControlError as exc:
            self._malformed(exc.reason, f"worker {camera}: {exc}")
            return
        kind = message["type"]
        if kind in ("command", "hello_request"):
            self._malformed("unexpected_type", f"worker {camera}: sent a {kind}, which only "
                            "the broker sends")  # fmt: skip
            return
        if kind == "hello":
            self._hello(identity, camera, message)
            return
        link = self.links.get(camera)
        if link is None or not link.connected:
            # We restarted, or it was lost: ask who it is rather than guess.
            self._complaints.warning("before_hello", "worker %s: %s before hello; asking for "
                                     "one", camera, kind)  # fmt: skip
            self._send_quietly(identity, HELLO_REQUEST)
            return
        link.last_seen = trio.current_time()
        if kind == "heartbeat":
            if isinstance(message.get("streaming"), bool):
                self._set_streaming(link, message["streaming"])
        else:
            self._reply(link, message)

    def _malformed(self, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        self._complaints.warning(reason, "control: dropped a malformed message (%s): %s",
                                 reason, detail)  # fmt: skip

    def _hello(self, identity: bytes, camera: str, message: dict[str, Any]) -> None:
        if message["camera"] != camera:
            self._malformed("identity_mismatch", f"routing id {camera!r} said hello as "
                            f"{message['camera'][:80]!r}")  # fmt: skip
            return
        known = camera in self.hub.cameras or camera in self.links or self.hub.accept_unknown
        if not known:
            self._malformed("unknown_camera", f"hello from camera {camera!r}, which is not in "
                            "the config")  # fmt: skip
            return
        now = trio.current_time()
        pid = message["pid"]
        link = self.links.get(camera)
        previous = link.pid if link is not None else None
        was_connected = link is not None and link.connected
        if link is None:
            link = self.links[camera] = WorkerLink(camera, identity)
        elif previous != pid:
            self._fail_pending(link, "worker_lost", f"the worker restarted (pid {pid})")
        link.identity = identity
        link.pid = pid
        link.device = message["device"]
        link.supported = message["supported"]  # checked by the codec, like all of it
        link.settings = dict(message["settings"])
        self._show_name(link)
        link.last_seen = now
        link.connected = True
        if not was_connected or previous != pid:
            link.connected_at = now
            link.streaming = message["streaming"]
        else:
            self._set_streaming(link, message["streaming"])
        details = {"pid": pid, "device": link.device, "streaming": link.streaming}
        if previous is None or (previous == pid and not was_connected):
            log.info("camera %s: worker connected (pid %d, %s)", camera, pid, link.device)
            self.events.publish("worker_connected", camera, **details)
        elif previous != pid:
            log.warning("camera %s: worker restarted (pid %d, was %d)", camera, pid, previous)
            self.events.publish("worker_restarted", camera, previous_pid=previous, **details)
        if camera in self._on_demand and not self._viewers(camera):
            self._idle_since[camera] = -math.inf  # unwatched now: it need not stream
        self._start(self._after_hello, link)

    async def _after_hello(self, link: WorkerLink) -> None:
        """Restore the stored settings, then let the on-demand logic decide on streaming."""
        camera = link.camera
        differing = {k: v for k, v in self._stored.get(camera, {}).items()
                     if link.settings.get(k) != v}  # fmt: skip
        try:
            camera_settings.validate(differing, link.supported)
        except camera_settings.SettingsError as bad:
            log.warning("camera %s: stored settings the worker does not accept, not restored: "
                        "%s", camera, bad)  # fmt: skip
            differing = {k: v for k, v in differing.items() if k not in bad.errors}
        if differing:
            log.info("camera %s: restoring stored settings %s", camera, differing)
            result = await self._command(camera, "update_settings", differing, "restore",
                                         persist=False)  # fmt: skip
            if not result.success:
                log.warning("camera %s: could not restore stored settings: %s", camera,
                            result.message)  # fmt: skip
        self._demand(camera)

    def _reply(self, link: WorkerLink, message: dict[str, Any]) -> None:
        before = link.settings
        link.settings = dict(message["settings"])
        self._set_streaming(link, message["streaming"])
        changed = sorted(k for k in before.keys() | link.settings.keys()
                         if before.get(k) != link.settings.get(k))  # fmt: skip
        if changed:
            self._show_name(link)
            self.events.publish("settings_changed", link.camera, settings=dict(link.settings),
                                changed=changed)  # fmt: skip
        pending = link.pending.get(message["request_id"])
        if pending is None:
            # Most likely the answer to a command that already timed out.
            self.errors["unknown_request"] += 1
            self._complaints.warning("unknown_request", "camera %s: a reply to no pending "
                                     "command (request %s); ignored", link.camera,
                                     message["request_id"])  # fmt: skip
            return
        if pending.command == "update_settings" and message["success"] and pending.persist:
            self._remember(link.camera, pending.changes)
        pending.answer(message)

    def _show_name(self, link: WorkerLink) -> None:
        """The ``name`` setting is the camera's display name; "" shows the configured one."""
        camera = self.hub.cameras.get(link.camera)
        if camera is None:
            return
        configured = self.config.camera(link.camera)
        fallback = configured.display_name if configured is not None else link.camera
        name = link.settings.get("name") or fallback
        if isinstance(name, str) and name != camera.info.name:
            camera.info = dataclasses.replace(camera.info, name=name)

    def _set_streaming(self, link: WorkerLink, streaming: bool) -> None:
        if link.streaming == streaming:
            return
        link.streaming = streaming
        log.info("camera %s: worker %s streaming", link.camera, "started" if streaming else
                 "stopped")  # fmt: skip
        self.events.publish("stream_started" if streaming else "stream_stopped", link.camera)
        self._demand(link.camera)

    # -- liveness ---------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Heartbeat every connected worker; declare the silent ones lost."""
        interval = self.config.control.heartbeat_interval
        lost_after = self.config.control.lost_after
        next_beat = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_beat:
                for link in list(self.links.values()):
                    if link.connected:
                        self._send_quietly(link.identity, HEARTBEAT)
                next_beat = now + interval
            wake = next_beat
            for link in list(self.links.values()):
                if not link.connected:
                    continue
                if now - link.last_seen >= lost_after:
                    self._lose(link, "silent", f"no word from the worker for {lost_after:g} s")
                else:
                    wake = min(wake, link.last_seen + lost_after)
            await trio.sleep_until(wake)

    def _lose(self, link: WorkerLink, reason: str, message: str) -> None:
        link.connected = False
        log.warning("camera %s: worker lost (pid %d): %s", link.camera, link.pid, message)
        self._fail_pending(link, "worker_lost", message)
        self.events.publish("worker_lost", link.camera, reason=reason, pid=link.pid,
                            message=message)  # fmt: skip
        self._demand(link.camera)

    def _fail_pending(self, link: WorkerLink, error: str, message: str) -> None:
        for pending in link.pending.values():
            pending.fail(error, message)

    def _send_quietly(self, identity: bytes, payload: bytes) -> None:
        """A send whose failure is not news: a gone peer is noticed by its silence."""
        if self._channel is None:
            return
        try:
            self._channel.send(identity, payload)
        except zmq.ZMQError as exc:
            log.debug("control: send to %r failed: %s", identity, exc)

    # -- the state file -----------------------------------------------------------

    def _remember(self, camera: str, changes: Mapping[str, Any]) -> None:
        """Store applied settings and write the state file soon (from a thread)."""
        if not changes:
            return
        self._stored.setdefault(camera, {}).update(changes)
        self._state_version += 1
        if self._state_file and not self._saving and self._nursery is not None:
            self._saving = True
            self._start(self._save_state)

    async def _save_state(self) -> None:
        """Write until the file holds the newest state; one writer at a time, so an older
        snapshot can never replace a newer one. A failed write (unwritable folder, disk
        full) is reported (log, health) and retried with backoff: the settings apply live
        meanwhile, and persist again once the file can be written."""
        retry = Backoff(STATE_RETRY, STATE_RETRY_MAX)
        try:
            while self._saved_version < self._state_version:
                version = self._state_version
                snapshot = {camera: dict(values) for camera, values in self._stored.items()}
                try:
                    await trio.to_thread.run_sync(state.save, self._state_file, snapshot)
                except OSError as exc:
                    self._state_failed(exc)
                    await trio.sleep(retry.next())
                    continue
                self._state_written()
                self._saved_version = version
        finally:
            self._saving = False

    def _save_now(self) -> None:
        try:
            state.save(self._state_file, self._stored)
        except OSError as exc:
            self._state_failed(exc)
        else:
            self._state_written()
            self._saved_version = self._state_version

    def _state_failed(self, exc: OSError) -> None:
        self._state_error = f"cannot write: {exc.strerror or exc}"
        self._complaints.warning("state", "state file %s: cannot write (%s); settings apply "
                                 "but will not survive a restart", self._state_file,
                                 exc)  # fmt: skip

    def _state_written(self) -> None:
        if self._state_error is not None:
            log.info("state file %s: written again", self._state_file)
        self._state_error = None

    @property
    def state_saved(self) -> bool:
        """True when the state file holds every change so far (for tests and shutdown)."""
        return self._saved_version == self._state_version

    # -- schedules ------------------------------------------------------------------

    async def _run_schedules(self) -> None:
        """Apply each camera's scheduled presets as the local time crosses their ``at``."""
        cameras = [camera for camera in self.config.cameras if camera.schedule]
        previous = self.wall_clock()
        while True:
            await trio.sleep(self.schedule_check)
            now = self.wall_clock()
            for camera in cameras:
                due = [
                    entry.preset for _, entry in schedule.crossings(camera.schedule, previous, now)
                ]
                if due:
                    self._start(self._apply_scheduled, camera.id, due)
            previous = schedule.advance(previous, now)

    async def _apply_scheduled(self, camera: str, presets: list[str]) -> None:
        for preset in presets:
            result = await self.apply_preset(camera, preset, request_id="schedule")
            if result.error == "not_connected":
                # Applied when the worker next says hello, like any stored setting.
                self._remember(camera, self.config.presets[preset])
                log.info("camera %s: scheduled preset %s stored; it applies when the worker "
                         "connects", camera, preset)  # fmt: skip
            elif result.success:
                log.info("camera %s: scheduled preset %s applied", camera, preset)

    # -- on-demand cameras ------------------------------------------------------------

    def _viewers(self, camera: str) -> int:
        hub_camera = self.hub.cameras.get(camera)
        return len(hub_camera.subscribers) if hub_camera is not None else 0

    def _demand(self, camera: str) -> None:
        """Wake the on-demand task of ``camera`` (if it is on-demand) to look again."""
        event = self._demand_changed.get(camera)
        if event is not None:
            event.set()

    def _watched(self, camera: Camera) -> None:
        self._demand(camera.id)

    def _unwatched(self, camera: Camera) -> None:
        if camera.id in self._on_demand and not camera.subscribers:
            self._idle_since[camera.id] = trio.current_time()
            self._demand(camera.id)

    async def _keep_demand(self, camera: CameraConfig) -> None:
        """Keep an on-demand camera streaming exactly while watched (plus ``idle_after``).
        One task per camera, so its start and stop commands never overlap."""
        while True:
            wake = self._demand_changed[camera.id] = trio.Event()
            link = self.links.get(camera.id)
            deadline = math.inf
            want = None
            if link is not None and link.connected:
                watched = self._viewers(camera.id) > 0
                if watched and not link.streaming:
                    want = "start_stream"
                elif not watched and link.streaming:
                    idle_since = self._idle_since.get(camera.id, -math.inf)
                    deadline = idle_since + camera.idle_after
                    if trio.current_time() >= deadline:
                        want = "stop_stream"
            if want is not None:
                why = "a viewer arrived" if want == "start_stream" else (
                    f"unwatched for {camera.idle_after:g} s")  # fmt: skip
                log.info("camera %s: on demand: %s, %s", camera.id, why, want)
                result = await self._command(camera.id, want, None, "on-demand", persist=False)
                if result.success and link.streaming == (want == "start_stream"):
                    continue
                deadline = trio.current_time() + ON_DEMAND_RETRY  # don't hammer a failing worker
            with trio.move_on_at(deadline):
                await wake.wait()

    # -- events from the hub -----------------------------------------------------------

    def _online(self, camera: Camera) -> None:
        latest = camera.latest
        size = {"width": latest.width, "height": latest.height, "format": latest.format} if (
            latest is not None) else {}  # fmt: skip
        self.events.publish("camera_online", camera.id, **size)

    def _offline(self, camera: Camera) -> None:
        self.events.publish("camera_offline", camera.id)

    # -- helpers ----------------------------------------------------------------------

    def _start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` once as a task of `run`'s nursery (dropped when not running),
        inside a boundary: an exception is counted as ``control:<its name>``
        (``control:after-hello``, ``control:save-state``, ``control:apply-scheduled``)."""
        if self._nursery is not None:
            where = "control:" + fn.__name__.strip("_").replace("_", "-")
            self._nursery.start_soon(self._contained, where, fn, *args)

    async def _contained(self, where: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        with self.faults.contain(where):
            await fn(*args)
