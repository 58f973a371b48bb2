"""A control plane under test: a `Control` on a real ROUTER, and a worker played by the
test over a real ZeroMQ DEALER, so each message on the wire is under the test's control.
Shared by the control-plane tests."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import zmq

from broker import config as configuration
from broker.control import Control, bridge
from broker.core.camera import CameraInfo
from broker.core.events import Listener
from broker.core.hub import Hub
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol.events import Event
from broker.serve import delivery

FAST = {"heartbeat_interval": 0.2, "lost_after": 0.6, "command_timeout": 3.0}


class WallClock:
    """The scheduler's clock, set by the test."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def make_config(
    tmp_path: Path, cameras: str = '[[cameras]]\nid = "cam"\n', extra: str = "", **control: Any
) -> configuration.Config:
    values = {**FAST, "state_file": str(tmp_path / "state.json"), **control}
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return configuration.parse(f"[control]\nendpoints = []\n{lines}\n{extra}\n{cameras}")


@asynccontextmanager
async def running_control(
    cfg: configuration.Config, prepare: Callable[[Control], None] | None = None
) -> AsyncIterator[Control]:
    hub = Hub(
        [CameraInfo(c.id, c.display_name, c.width, c.height) for c in cfg.cameras],
        offline_after=1.0,
    )
    context = zmq.Context()
    try:
        control = Control(cfg, hub)
        control.on_settings = bridge.show_names(cfg, hub)  # as the composition root does
        control.bind(context, ["tcp://127.0.0.1:*"])
        if prepare is not None:
            prepare(control)
        async with trio.open_nursery() as nursery:
            await nursery.start(control.run)
            try:
                yield control
            finally:
                nursery.cancel_scope.cancel()
    finally:
        context.destroy(linger=0)


class FakeWorker:
    """A worker played by the test over a real DEALER socket."""

    def __init__(
        self,
        endpoint: str,
        camera: str = "cam",
        pid: int = 4242,
        identity: str | None = None,
        **settings: Any,
    ) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, (identity or camera).encode())
        self.socket.connect(endpoint)
        self.camera = camera
        self.pid = pid
        self.settings = {**camera_settings.defaults(), **settings}
        self.supported = camera_settings.supported()
        self.streaming = True
        self.received: list[dict[str, Any]] = []  # every message, heartbeats included
        self.answer = True  # reply to commands (when serving)

    def send(self, kind: str, **fields: Any) -> None:
        self.socket.send(protocol.encode(kind, **fields), zmq.NOBLOCK)

    def hello(self, **overrides: Any) -> None:
        fields = {
            "camera": self.camera,
            "device": "fake source",
            "supported": self.supported,
            "settings": self.settings,
            "streaming": self.streaming,
            "pid": self.pid,
        }
        self.send("hello", **{**fields, **overrides})

    def reply(self, command: dict[str, Any], success: bool = True, message: str = "ok") -> None:
        self.send(
            "reply",
            request_id=command["request_id"],
            success=success,
            message=message,
            settings=self.settings,
            streaming=self.streaming,
            timestamp=time.time(),
        )

    async def receive(self, *kinds: str, within: float = 5.0) -> dict[str, Any]:
        """The next message of one of ``kinds`` (any, if none given); others are skipped."""
        with trio.fail_after(within):
            while True:
                try:
                    message = protocol.decode(self.socket.recv(zmq.NOBLOCK))
                except zmq.Again:
                    await trio.sleep(0.005)
                    continue
                self.received.append(message)
                if not kinds or message["type"] in kinds:
                    return message

    async def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every message received within ``seconds``."""
        start = len(self.received)
        with trio.move_on_after(seconds):
            while True:
                await self.receive(within=seconds + 1)
        return self.received[start:]

    def run_command(self, command: dict[str, Any]) -> None:
        """What a real worker does, minus the camera."""
        name, changes = command["command"], command["settings"]
        if name == "update_settings":
            try:
                self.settings.update(camera_settings.validate(changes, self.supported))
            except camera_settings.SettingsError as bad:
                self.reply(command, False, str(bad))
                return
        elif name in ("start_stream", "stop_stream"):
            self.streaming = name == "start_stream"
        self.reply(command)

    async def serve(
        self,
        *,
        heartbeat: float = 0.2,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Say hello, heartbeat, answer commands (while ``answer``) until cancelled."""
        self.hello()
        task_status.started()
        next_beat = trio.current_time()
        while True:
            if trio.current_time() >= next_beat:
                self.send("heartbeat", streaming=self.streaming)
                next_beat += heartbeat
            with trio.move_on_after(0.05):
                message = await self.receive(within=10)
                if message["type"] == "hello_request":
                    self.hello()
                elif message["type"] == "command" and self.answer:
                    self.run_command(message)

    def commands(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == "command"]

    def close(self) -> None:
        self.context.destroy(linger=0)


@asynccontextmanager
async def fake_worker(control: Control, **kwargs: Any) -> AsyncIterator[FakeWorker]:
    worker = FakeWorker(control.endpoints[0], **kwargs)
    try:
        yield worker
    finally:
        worker.close()


@asynccontextmanager
async def serving(control: Control, **kwargs: Any) -> AsyncIterator[FakeWorker]:
    """A fake worker that says hello and serves until the block ends; waits until connected."""
    async with fake_worker(control, **kwargs) as worker, trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        with trio.fail_after(5):
            while not control.connected(worker.camera):
                await trio.sleep(0.01)
        try:
            yield worker
        finally:
            nursery.cancel_scope.cancel()


async def next_event(listener: Listener, name: str, within: float = 5.0) -> Event:
    with trio.fail_after(within):
        while (event := await delivery.next_event(listener)).event != name:
            pass
    return event


async def wait_for(predicate: Callable[[], object], within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.02)
