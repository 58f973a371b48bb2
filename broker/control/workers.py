"""The worker registry and liveness: what the broker knows of each camera's worker.

A `WorkerLink` per camera, updated from the worker's hello, heartbeats and replies.
Both sides heartbeat every ``heartbeat_interval``; a worker silent for ``lost_after`` is
lost (event ``worker_lost``), as it is when the supervisor reports its process exited
or a send finds it gone. A hello with a new pid is a restarted worker
(``worker_restarted``). Whoever must act on a lost worker (its pending commands, the
on-demand logic) is told through the ``gone`` and ``changed`` callbacks.

Bookkeeping is synchronous with an injected clock; `Workers.keep_alive` is the one job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from broker.control.channel import Complaints
from broker.core.events import EventBus
from broker.protocol import control as protocol

log = logging.getLogger("broker.control")

HEARTBEAT = protocol.encode("heartbeat")


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
    connected_at: float = 0.0  # the registry's clock
    last_seen: float = 0.0  # the registry's clock: the last message of any kind

    def describe(self, now: float, pending: int) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "pid": self.pid,
            "device": self.device,
            "streaming": self.streaming,
            "last_seen_s": round(now - self.last_seen, 1),
            "pending_commands": pending,
        }


def _ignore(*args: object) -> None:
    pass


class Workers:
    """Every worker that ever said hello, by camera id."""

    def __init__(
        self,
        events: EventBus,
        complaints: Complaints,
        lost_after: float,
        *,
        known: Callable[[str], bool] = lambda camera: True,
        gone: Callable[[str, str], None] = _ignore,
        changed: Callable[[str], None] = _ignore,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.events = events
        self.complaints = complaints
        self.lost_after = lost_after
        self.known = known  # may a worker of this camera say hello (configured, or accepted)
        self.gone = gone  # (camera, why): a worker was lost or restarted
        self.changed = changed  # camera: its worker's connection or streaming changed
        self.clock = clock
        self.links: dict[str, WorkerLink] = {}

    def connected(self, camera: str) -> WorkerLink | None:
        link = self.links.get(camera)
        return link if link is not None and link.connected else None

    def hello(self, identity: bytes, camera: str, message: dict[str, Any]) -> WorkerLink | None:
        """Register a hello; None when it is refused (counted and logged)."""
        if message["camera"] != camera:
            self.complaints.malformed(
                "identity_mismatch",
                f"routing id {camera!r} said hello as {message['camera'][:80]!r}",
            )
            return None
        if not (camera in self.links or self.known(camera)):
            self.complaints.malformed(
                "unknown_camera", f"hello from camera {camera!r}, which is not in the config"
            )
            return None
        now = self.clock()
        pid = message["pid"]
        link = self.links.get(camera)
        previous = link.pid if link is not None else None
        was_connected = link is not None and link.connected
        if link is None:
            link = self.links[camera] = WorkerLink(camera, identity)
        elif previous != pid:
            self.gone(camera, f"the worker restarted (pid {pid})")
        link.identity = identity
        link.pid = pid
        link.device = message["device"]
        link.supported = message["supported"]  # checked by the codec, like all of it
        link.settings = dict(message["settings"])
        link.last_seen = now
        link.connected = True
        if not was_connected or previous != pid:
            link.connected_at = now
            link.streaming = message["streaming"]
        else:
            self.set_streaming(link, message["streaming"])
        details = {"pid": pid, "device": link.device, "streaming": link.streaming}
        if previous is None or (previous == pid and not was_connected):
            log.info("camera %s: worker connected (pid %d, %s)", camera, pid, link.device)
            self.events.publish("worker_connected", camera, **details)
        elif previous != pid:
            log.warning("camera %s: worker restarted (pid %d, was %d)", camera, pid, previous)
            self.events.publish("worker_restarted", camera, previous_pid=previous, **details)
        return link

    def heard(self, camera: str) -> WorkerLink | None:
        """A message other than hello from ``camera``: its link if connected (now seen),
        else None (the caller asks it for a hello)."""
        link = self.connected(camera)
        if link is not None:
            link.last_seen = self.clock()
        return link

    def reported(self, link: WorkerLink, settings: dict[str, Any], streaming: bool) -> list[str]:
        """A reply's settings and streaming state; returns the keys that changed."""
        before = link.settings
        link.settings = dict(settings)
        self.set_streaming(link, streaming)
        return sorted(
            k for k in before.keys() | link.settings.keys() if before.get(k) != link.settings.get(k)
        )

    def set_streaming(self, link: WorkerLink, streaming: bool) -> None:
        if link.streaming == streaming:
            return
        link.streaming = streaming
        log.info(
            "camera %s: worker %s streaming", link.camera, "started" if streaming else "stopped"
        )
        self.events.publish("stream_started" if streaming else "stream_stopped", link.camera)
        self.changed(link.camera)

    def lose(self, link: WorkerLink, reason: str, message: str) -> None:
        link.connected = False
        log.warning("camera %s: worker lost (pid %d): %s", link.camera, link.pid, message)
        self.gone(link.camera, message)
        self.events.publish(
            "worker_lost", link.camera, reason=reason, pid=link.pid, message=message
        )
        self.changed(link.camera)

    def exited(self, camera: str, pid: int, how: str) -> None:
        """The supervisor saw ``camera``'s worker process ``pid`` exit."""
        link = self.links.get(camera)
        if link is None or link.pid != pid:
            return  # it never said hello, or a newer worker already did
        if link.connected:
            self.lose(link, "exited", f"the worker process exited ({how})")

    def silent_for(self, camera: str) -> float | None:
        link = self.links.get(camera)
        return None if link is None else self.clock() - link.last_seen

    def check(self, now: float) -> float:
        """Declare the workers silent for ``lost_after`` lost; returns when the next one
        would be (inf when none is connected)."""
        wake = math.inf
        for link in list(self.links.values()):
            if not link.connected:
                continue
            if now - link.last_seen >= self.lost_after:
                self.lose(link, "silent", f"no word from the worker for {self.lost_after:g} s")
            else:
                wake = min(wake, link.last_seen + self.lost_after)
        return wake

    async def keep_alive(self, send: Callable[[bytes, bytes], None], interval: float) -> None:
        """Heartbeat every connected worker with ``send``; declare the silent ones lost.
        Runs on trio's clock, which must then be the registry's."""
        next_beat = self.clock()
        while True:
            now = self.clock()
            if now >= next_beat:
                for link in list(self.links.values()):
                    if link.connected:
                        send(link.identity, HEARTBEAT)
                next_beat = now + interval
            await trio.sleep_until(min(next_beat, self.check(now)))
