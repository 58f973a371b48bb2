"""The control plane: commands and settings for camera workers over a ZeroMQ ROUTER.

What the rest of the broker uses is `Control`: ``command``, ``apply_preset``,
``settings``, ``supported``, ``connected``, ``streaming``, ``camera_status``,
``health``, ``silent_for`` and ``worker_exited`` (for the supervisor), the `EventBus`
``events``, and the ``on_settings`` hook. ``command`` never raises for a camera-side
problem; it answers with a `CommandResult` whose ``error`` says what went wrong.

`Control` composes one part per job, each a module of this package:

- `channel`: the ROUTER; its one receive task checks each message and hands it here.
- `workers`: the registry of worker links, and liveness (heartbeats, lost workers).
- `commands`: the command round trip, bounded by ``control.command_timeout``.
- `store`: the state file, and the job that keeps it written.
- `schedule`: scheduled presets; `on_demand`: cameras that stream only while watched.
- `bridge`: hub transitions as events, the ``name`` setting as the display name.
- `jobs`: the boundary every one-off job runs in.

On every hello the broker restores the settings stored in the state file, and tells an
on-demand worker whether to stream. Every background job (heartbeats, schedules, each
on-demand camera, each after-hello restore, each state save) runs inside a boundary of
`Faults`: a bug costs that job a restart (or that one run), never the broker. A state
file that cannot be written does not stop anything either: settings still apply live,
and ``health`` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio
import zmq

from broker.config import Config
from broker.control import bridge, channel
from broker.control.channel import Complaints, RouterChannel
from broker.control.commands import Commands
from broker.control.jobs import Jobs
from broker.control.on_demand import OnDemand
from broker.control.schedule import Scheduler
from broker.control.store import StateStore
from broker.control.workers import WorkerLink, Workers
from broker.core.events import EventBus
from broker.core.hub import Hub
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol.results import CommandResult
from broker.support.faults import Faults
from broker.trust.curve import CameraKeys

log = logging.getLogger("broker.control")

HELLO_REQUEST = protocol.encode("hello_request")

# (camera, its settings as the worker reported them): after a hello, and after a reply
# that changed them.
SettingsHook = Callable[[str, Mapping[str, Any]], None]


def _ignore(camera: str, settings: Mapping[str, Any]) -> None:
    pass


class Control:
    """The broker side of the control channel. `bind`, then run `run` in a nursery."""

    def __init__(
        self,
        config: Config,
        hub: Hub,
        events: EventBus | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.faults = faults if faults is not None else Faults()
        self.events = events if events is not None else EventBus()
        self.on_settings: SettingsHook = _ignore  # the composition root shows names with it
        self.endpoints: list[str] = []
        self.complaints = Complaints()
        self.jobs = Jobs(self.faults)
        self.store = StateStore(config.control.state_file, self.jobs)
        self.workers = Workers(
            self.events,
            self.complaints,
            config.control.lost_after,
            known=lambda camera: camera in hub.cameras or hub.accept_unknown,
            gone=self._worker_gone,
            changed=self._worker_changed,
        )
        self.commands = Commands(
            config,
            self.workers,
            self.complaints,
            settings=self.settings,
            is_camera=lambda camera: camera in hub.cameras or camera in self.workers.links,
            applied=self.store.remember,
            broker_applied=self._broker_applied,
        )
        # The broker's own settings (analytics) of a camera changed: (camera, them all).
        self.on_broker_settings: SettingsHook = _ignore
        self.schedules = Scheduler(
            config.cameras, config.presets, self.commands.preset, self.store.remember, self.jobs
        )
        self.on_demand = OnDemand(config.cameras, hub, self.workers, self.commands)
        hub.hooks.watched = self.on_demand.watched
        hub.hooks.unwatched = self.on_demand.unwatched
        bridge.announce_cameras(hub.hooks, self.events)
        self._channel: RouterChannel | None = None
        self.socket: zmq.Socket[bytes] | None = None  # the bound ROUTER, for its monitor
        # Shared with the parts, read by /metrics and /healthz.
        self.links = self.workers.links
        self.errors = self.complaints.counts  # malformed or refused messages, by reason
        self.results = self.commands.results  # command outcomes: "ok" or the error code

    # -- running ---------------------------------------------------------------

    def bind(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoints: Sequence[str],
        security: dict[int, int | bytes] | None = None,
        keys: CameraKeys | None = None,
    ) -> list[str]:
        """Bind the ROUTER (raises `zmq.ZMQError`, e.g. address in use); returns the
        endpoints bound, ``tcp://host:*`` resolved to its port. With ``security`` (the
        CURVE server options) and ``keys``, only camera keys are heard
        (`broker.trust.curve`)."""
        socket, self.endpoints = channel.bind(
            context, endpoints, security, self.config.control.heartbeat_interval
        )
        self.socket = socket
        self._channel = self.commands.channel = RouterChannel(socket, self.complaints, keys)
        return self.endpoints

    async def run(
        self, *, task_status: trio.TaskStatus[Control] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive, heartbeat, schedule and start/stop on-demand cameras until cancelled;
        closes the socket on the way out."""
        router = self._channel
        if router is None:
            raise RuntimeError("Control.bind must be called before Control.run")
        try:
            async with trio.open_nursery() as nursery:
                self.jobs.nursery = nursery
                keep_running = self.faults.keep_running
                nursery.start_soon(router.serve, self._deliver, self.faults, name="control:receive")
                nursery.start_soon(
                    keep_running,
                    "control:heartbeats",
                    self.workers.keep_alive,
                    router.send_quietly,
                    self.config.control.heartbeat_interval,
                    name="control:heartbeats",
                )
                if self.schedules.cameras:
                    nursery.start_soon(
                        keep_running,
                        "control:schedules",
                        self.schedules.run,
                        name="control:schedules",
                    )
                for camera in self.on_demand.cameras.values():
                    nursery.start_soon(
                        keep_running,
                        "control:on-demand",
                        self.on_demand.keep,
                        camera,
                        name=f"on-demand:{camera.id}",
                    )
                task_status.started(self)
        finally:
            self.jobs.nursery = None
            router.close()
            self._channel = self.commands.channel = None
            if not self.store.saved:  # a change made just before shutdown
                self.store.save_now()

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
        return await self.commands.run(camera, command, settings, request_id, persist=True)

    async def apply_preset(
        self, camera: str, preset: str, request_id: str | None = None
    ) -> CommandResult:
        """``update_settings`` with the named preset's settings."""
        return await self.commands.preset(camera, preset, request_id)

    def settings(self, camera: str) -> dict[str, Any] | None:
        """The last known settings: from the worker (hello or reply), else the stored ones
        (None: neither); with the broker's own (analytics) settings of the camera."""
        link = self.links.get(camera)
        if link is not None and link.settings:
            known = camera_settings.split(link.settings)[0]
        else:
            stored = self.store.get(camera)
            if stored is None:
                return None
            known = camera_settings.split(stored)[0]
        return {**known, **self.broker_settings(camera)}

    def broker_settings(self, camera: str) -> dict[str, Any]:
        """The broker's own settings of ``camera`` (ai_*): the stored ones, else defaults."""
        stored = self.store.stored.get(camera, {})
        return {
            key: stored.get(key, camera_settings.SETTINGS[key].default)
            for key in camera_settings.BROKER_KEYS
        }

    def supported(self, camera: str) -> dict[str, dict[str, Any]] | None:
        """What the camera's worker accepts, and the broker's own settings; without a
        worker, the broker's own settings only."""
        link = self.links.get(camera)
        own = {key: camera_settings.SETTINGS[key].describe() for key in camera_settings.BROKER_KEYS}
        if link is None:
            return own
        return {**dict(link.supported), **own}

    def connected(self, camera: str) -> bool:
        return self.workers.connected(camera) is not None

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
            "on_demand": camera in self.on_demand.cameras,
            "settings": self.settings(camera) or {},
        }

    def health(self) -> dict[str, Any]:
        now = self.workers.clock()
        workers = {
            camera: link.describe(now, self.commands.waiting(camera))
            for camera, link in sorted(self.links.items())
        }
        return {
            "endpoints": list(self.endpoints),
            "workers_connected": sum(link.connected for link in self.links.values()),
            "workers": workers,
            "errors": dict(self.errors),
            "commands": dict(self.results),
            "state_file": self.state_file_health(),
        }

    def state_file_health(self) -> dict[str, Any]:
        """``ok`` is false while the last write failed (``error`` says why)."""
        return self.store.health()

    @property
    def state_saved(self) -> bool:
        """True when the state file holds every change so far (for tests and shutdown)."""
        return self.store.saved

    def silent_for(self, camera: str) -> float | None:
        """Seconds since ``camera``'s worker last sent anything on control (a paused
        worker heartbeats too); None before its first hello. For the supervisor."""
        return self.workers.silent_for(camera)

    def worker_exited(self, camera: str, pid: int, how: str = "exited") -> None:
        """The supervisor saw ``camera``'s worker process ``pid`` exit: fail its pending
        commands now rather than at their timeout."""
        self.workers.exited(camera, pid, how)

    # -- what workers say ------------------------------------------------------------

    def _deliver(self, identity: bytes, camera: str, message: dict[str, Any]) -> None:
        """A well-formed message from a worker (the channel checked it)."""
        kind = message["type"]
        if kind == "hello":
            self._hello(identity, camera, message)
            return
        link = self.workers.heard(camera)
        if link is None:
            # We restarted, or it was lost: ask who it is rather than guess.
            self.complaints.throttle.warning(
                "before_hello", "worker %s: %s before hello; asking for one", camera, kind
            )
            if self._channel is not None:
                self._channel.send_quietly(identity, HELLO_REQUEST)
            return
        if link.identity != identity:
            # With camera keys the ROUTER draws a route per connection, and the key
            # vouches for the camera: a worker that reconnected speaks on a new route,
            # and is answered there (without keys the route is the camera id).
            link.identity = identity
        if kind == "heartbeat":
            if isinstance(message.get("streaming"), bool):
                self.workers.set_streaming(link, message["streaming"])
        else:
            self._reply(link, message)

    def _hello(self, identity: bytes, camera: str, message: dict[str, Any]) -> None:
        link = self.workers.hello(identity, camera, message)
        if link is None:
            return
        self.on_settings(camera, link.settings)
        self.on_demand.hello(camera)
        self.jobs.start("control:after-hello", self._after_hello, link)

    async def _after_hello(self, link: WorkerLink) -> None:
        """Restore the stored settings, then let the on-demand logic decide on streaming."""
        camera = link.camera
        differing = self.store.to_restore(camera, link.settings, link.supported)
        if differing:
            log.info("camera %s: restoring stored settings %s", camera, differing)
            result = await self.commands.run(
                camera, "update_settings", differing, "restore", persist=False
            )
            if not result.success:
                log.warning(
                    "camera %s: could not restore stored settings: %s", camera, result.message
                )
        self.on_demand.wake(camera)

    def _reply(self, link: WorkerLink, message: dict[str, Any]) -> None:
        """Complete the command, then tell whoever listens what changed."""
        changed = self.workers.reported(link, message["settings"], message["streaming"])
        self.commands.complete(link.camera, message)
        if changed:
            self.on_settings(link.camera, link.settings)
            self.events.publish(
                "settings_changed", link.camera, settings=dict(link.settings), changed=changed
            )

    def _broker_applied(self, camera: str, own: Mapping[str, Any], persist: bool) -> None:
        """The broker's own settings of ``camera`` changed: persist, tell listeners."""
        before = self.broker_settings(camera)
        if persist:
            self.store.remember(camera, own)
        else:
            self.store.stored.setdefault(camera, {}).update(own)
        after = self.broker_settings(camera)
        changed = sorted(key for key in after if after[key] != before[key])
        if changed:
            log.info("camera %s: %s", camera, ", ".join(f"{k}={after[k]!r}" for k in changed))
            self.on_broker_settings(camera, after)
            self.events.publish(
                "settings_changed", camera, settings=self.settings(camera) or {}, changed=changed
            )

    def _worker_gone(self, camera: str, why: str) -> None:
        self.commands.fail_all(camera, "worker_lost", why)

    def _worker_changed(self, camera: str) -> None:
        self.on_demand.wake(camera)
