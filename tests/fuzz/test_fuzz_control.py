"""Fuzz target: the control channel, from the worker's bytes to what clients read.

1. `cameras.control.decode` on mutated valid messages and garbage: a dict carrying the
   fields of its type with their types, or `ControlError`; nothing else.
2. The broker's control plane in-process (`Control` with its receive loop, heartbeats,
   on-demand and restore tasks running; the ROUTER replaced by `FakeWorkers`): a
   sequence of worker messages (hellos, heartbeats and replies whose every field may be
   any msgpack value, bytes mutated, from any routing id), client commands and presets,
   scripted replies, viewers arriving and leaving, time passing. Invariant: no task of
   the control plane raises, no fault is counted, every command answers a
   `CommandResult`; then everything that reads the state answers strict JSON: the
   HTTP bodies of ``/api/cameras``, ``/api/stats``, ``/healthz``, the settings route and
   command results, ``/metrics``, and each event and command result as ``/ws`` sends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from fuzzing import (
    CAMERAS,
    FakeWorker,
    InProcessBroker,
    bounded,
    budget,
    check_broker_fine,
    check_response,
    in_process_broker,
    run_trio,
    strict_json,
    write_state,
)
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import json_values, msgpack_values, mutate_bytes

from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol.events import Event
from broker.protocol.results import CommandResult
from broker.serve.access import OPEN
from broker.serve.handlers import status_response
from broker.serve.http import json_response
from broker.serve.router import parse
from broker.serve.wsapi import Session

STORED = {"cam": {"brightness": 60, "name": "Stored"}}  # as if from an earlier run
IDENTITIES = [b"cam", b"od", b"up", b"ghost", b"", b"\xff\xfe", b"cam\x00", b"-dash"]
REQUEST_IDS = ["1", "2", "3", "4", "restore", "on-demand", "", "x" * 300]

# -- what a worker may send ------------------------------------------------------------

setting_names = st.sampled_from(list(camera_settings.SETTINGS)) | st.text(max_size=10)
client_settings = st.dictionaries(setting_names, json_values, max_size=4)


@st.composite
def supported_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A worker's ``supported``: ours, with some entries' fields replaced by anything."""
    supported: dict[Any, Any] = camera_settings.supported()
    for _ in range(draw(st.integers(0, 3))):
        name = draw(setting_names | st.binary(max_size=6))
        entry = supported.get(name)
        if not isinstance(entry, dict) or draw(st.integers(0, 4)) == 0:
            supported[name] = draw(msgpack_values)
            continue
        key = draw(st.sampled_from(["type", "default", "min", "max", "choices"]))
        entry[key] = draw(msgpack_values | st.sampled_from(["x", b"\x00", None, [1], -1]))
    return supported


@st.composite
def settings_maps(draw: st.DrawFn) -> dict[Any, Any]:
    settings: dict[Any, Any] = camera_settings.defaults()
    for _ in range(draw(st.integers(0, 3))):
        key = draw(setting_names | st.binary(max_size=6))
        settings[key] = draw(msgpack_values)
    return settings


@st.composite
def worker_messages(draw: st.DrawFn, identity: bytes) -> bytes:
    """One message as a worker (or anything on the ROUTER) might send it."""
    kind = draw(
        st.sampled_from(
            ["hello", "hello", "heartbeat", "reply", "reply", "command", "hello_request", "other"]
        )
    )
    fields: dict[Any, Any] = {"type": kind, "version": 1}
    camera = identity.decode("ascii", "replace")
    if kind == "hello":
        fields.update(
            camera=draw(st.just(camera) | st.sampled_from(list(CAMERAS))),
            device="fuzz",
            supported=draw(supported_maps()),
            settings=draw(settings_maps()),
            streaming=draw(st.booleans()),
            pid=draw(st.sampled_from([4242, 77, 1, 0, -1, 2**63])),
        )
    elif kind == "heartbeat" and draw(st.booleans()):
        fields["streaming"] = draw(st.booleans() | msgpack_values)
    elif kind == "reply":
        fields.update(
            request_id=draw(st.sampled_from(REQUEST_IDS)),
            success=draw(st.booleans()),
            message=draw(st.text(max_size=20)),
            settings=draw(settings_maps()),
            streaming=draw(st.booleans()),
            timestamp=draw(st.floats() | st.integers(-(2**63), 2**63)),
        )
        if draw(st.booleans()):
            fields["errors"] = draw(msgpack_values)
    elif kind == "command":
        fields.update(request_id="9", command=draw(st.sampled_from(protocol.COMMANDS)), settings={})
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["replace", "drop", "add"]) if fields else st.just("add"))
        if op == "replace":
            fields[draw(st.sampled_from(sorted(fields, key=repr)))] = draw(msgpack_values)
        elif op == "drop":
            fields.pop(draw(st.sampled_from(sorted(fields, key=repr))))
        else:
            fields[draw(st.text(max_size=6) | st.binary(max_size=6))] = draw(msgpack_values)
    payload = msgpack.packb(fields)
    if draw(st.integers(0, 5)) == 0:
        payload = mutate_bytes(draw, payload)
    return payload


@st.composite
def worker_lines(draw: st.DrawFn) -> tuple[bytes, bytes]:
    identity = draw(st.sampled_from(IDENTITIES) | st.binary(max_size=10))
    return identity, draw(worker_messages(identity))


camera_names = st.sampled_from([*CAMERAS, "ghost"])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("message"), worker_lines()),
        st.tuples(st.just("message"), worker_lines()),
        st.tuples(
            st.just("command"),
            st.tuples(
                camera_names,
                st.sampled_from([*protocol.COMMANDS, "update_settings", "bogus"]),
                st.none() | client_settings,
            ),
        ),
        st.tuples(st.just("preset"), st.tuples(camera_names, st.sampled_from(["night", "no"]))),
        st.tuples(
            st.just("script"), st.tuples(st.sampled_from(["cam", "od"]), worker_messages(b"cam"))
        ),
        st.tuples(st.just("sleep"), st.floats(0, 5)),
        st.tuples(st.just("watch"), camera_names),
        st.tuples(st.just("unwatch"), camera_names),
        st.tuples(st.just("exited"), st.tuples(camera_names, st.sampled_from([4242, 77, 5]))),
        st.tuples(st.just("silence"), st.sampled_from(["cam", "od"])),
    ),
    max_size=12,
)


# -- the invariants --------------------------------------------------------------------


def check_decode(payload: bytes) -> None:
    with bounded("control.decode"):
        try:
            message = protocol.decode(payload)
        except protocol.ControlError as error:
            assert str(error)
            return
    kind = message["type"]
    assert kind in protocol.FIELDS and message["version"] == protocol.CONTROL_VERSION
    for name, kinds in protocol.FIELDS[kind].items():
        assert isinstance(message[name], kinds), (kind, name, message[name])


class RecordingWebSocket:
    """Enough of a trio-websocket connection for `Session.send`: keeps what it sends."""

    closed = None
    _stream = None

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_message(self, data: str) -> None:
        self.sent.append(data)


async def play(target: InProcessBroker, script: list[tuple[str, Any]]) -> list[Any]:
    """Run the steps; returns the command results (a CommandResult each, or the
    exception a command raised)."""
    broker, channel = target.broker, target.workers
    control, hub = broker.control, broker.hub
    results: list[Any] = []
    viewers: dict[str, list[Any]] = {}

    async def command(camera: str, name: str, settings: Any, preset: str | None) -> None:
        try:
            if preset is not None:
                results.append(await control.apply_preset(camera, preset))
            else:
                results.append(await control.command(camera, name, settings))
        except Exception as exc:  # the contract: command never raises
            results.append(exc)

    for kind, arg in script:
        if kind == "message":
            worker = channel.workers.get(arg[0])
            if worker is not None:
                worker.adopt(arg[1])
            channel.deliver(*arg)
        elif kind == "command":
            camera, name, settings = arg
            target.nursery.start_soon(command, camera, name, settings, None)
        elif kind == "preset":
            target.nursery.start_soon(command, arg[0], "", None, arg[1])
        elif kind == "script":
            worker = channel.workers.get(arg[0].encode())
            if worker is not None:
                worker.scripted.append(arg[1])
        elif kind == "sleep":
            await trio.sleep(arg)
        elif kind == "watch" and arg in hub.cameras:
            viewers.setdefault(arg, []).append(hub.subscribe(arg, "fuzz", 2))
        elif kind == "unwatch" and viewers.get(arg):
            hub.unsubscribe(viewers[arg].pop())
        elif kind == "exited":
            control.worker_exited(*arg)
        elif kind == "silence":
            channel.workers[arg.encode()].silent = True
        await target.settle()
    await trio.sleep(control.config.control.command_timeout + 0.1)  # every command answered
    await target.settle()
    return results


async def read_everything(target: InProcessBroker, events: list[Event], results: list[Any]) -> None:
    """Every reader of the control state, through the serializer that sends it."""
    broker = target.broker
    server, control = broker.server, broker.control
    bodies = {
        "/healthz": server.health(),
        "/api/cameras": server.views.cameras(),
        "/api/stats": server.views.stats(),
        "control.health": control.health(),
    }
    for camera in [*CAMERAS, *control.links]:
        bodies[f"camera_status({camera!r})"] = control.camera_status(camera)
    for what, body in bodies.items():
        strict_json(json_response(body).body, what)
    assert broker.metrics.exposition()
    for camera in CAMERAS:
        route = parse(f"/api/cameras/{camera}/settings".encode())
        response = await server.handlers.command("GET", route, b"", "reader", None)
        check_response(response, f"GET /api/cameras/{camera}/settings")
    session = Session(broker.server.wsapi, RecordingWebSocket(), OPEN, "fuzz")  # type: ignore[arg-type]
    for result in results:
        if isinstance(result, Exception):
            raise AssertionError(f"a command raised {result!r}") from result
        assert isinstance(result, CommandResult), result
        check_response(status_response(result), "a command's HTTP answer")
        await session.send({"type": "command_result", **result.to_json()})
    for event in events:
        await session.send(event.to_json())  # as wsapi forwards an event
    for text in session.ws.sent:  # type: ignore[attr-defined]
        strict_json(text, "a /ws message")


def check_control(script: list[tuple[str, Any]], state_file: Path) -> None:
    write_state(state_file, STORED)

    async def main() -> None:
        async with in_process_broker(
            state_file=str(state_file), workers=(FakeWorker("cam"), FakeWorker("od", pid=77))
        ) as target:
            listener = target.broker.control.events.listen()
            results = await play(target, script)
            events: list[Event] = []
            while (event := listener.get_nowait()) is not None:
                events.append(event)
            await read_everything(target, events, results)
            check_broker_fine(target, "control")

    run_trio(main, "the control plane")


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control") / "state.json"


# -- the tests -------------------------------------------------------------------------


@budget(2000, each=0.002)
@given(worker_lines())
def test_mutated_control_messages_decode_or_raise_control_error(line: tuple[bytes, bytes]) -> None:
    check_decode(line[1])


@budget(500, each=0.002)
@given(st.binary(max_size=200))
def test_garbage_control_messages_decode_or_raise_control_error(payload: bytes) -> None:
    check_decode(payload)


@budget(400, each=0.15)
@given(steps)
# Every run replays the escape it found (a `type` that is a map), whichever examples the
# clock lets hypothesis draw:
@example([("message", (b"cam", msgpack.packb({"type": {}, "version": 1})))])
def test_control_plane_survives_any_worker_and_answers_strict_json(
    state_file: Path, script: list[tuple[str, Any]]
) -> None:
    check_control(script, state_file)


def test_the_harness_answers_commands_like_a_worker(state_file: Path) -> None:
    """The control plane in-process is real: commands reach the fake worker and come
    back through the broker's receive path; a camera with no worker is not connected."""
    script = [
        ("command", ("cam", "update_settings", {"brightness": 61})),
        ("command", ("cam", "get_status", None)),
        ("command", ("up", "get_status", None)),
        ("command", ("cam", "update_settings", {"brightness": 500})),
    ]
    write_state(state_file, {})

    async def main() -> None:
        async with in_process_broker(state_file=str(state_file)) as target:
            results = await play(target, script)
            by_command = [(r.camera, r.command, r.success, r.error) for r in results]
            assert sorted(by_command, key=repr) == sorted(
                [
                    ("cam", "update_settings", True, None),
                    ("cam", "get_status", True, None),
                    ("up", "get_status", False, "not_connected"),
                    ("cam", "update_settings", False, "invalid_settings"),
                ],
                key=repr,
            )
            settings = target.broker.control.settings("cam")
            assert settings is not None and settings["brightness"] == 61
            check_broker_fine(target, "the harness")

    run_trio(main, "the control harness")
