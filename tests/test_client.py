"""`broker.client` against a real broker: in-process with ZeroMQ publishers or real
camera-worker processes, and `broker run` processes for restarts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq
from helpers import config, publisher, running_broker, sample_jpeg
from procs import BrokerProcess, synthetic_camera, write_config

from broker import client as broker_client
from broker import config as configuration
from broker.app import Broker
from broker.client import (
    AuthError,
    BrokerError,
    ConnectError,
    ConnectionLost,
    Frame,
    RequestTimeout,
)
from broker.client.frames import FrameQueues
from broker.protocol import control, settings, stamp

TWO_CAMERAS = '[[cameras]]\nid = "a"\n[[cameras]]\nid = "b"\n'
SMALL = sample_jpeg(320, 240)
WORKER_CAMERA = (
    "[presets.night]\nbrightness = 30\ncontrast = 60\n"
    '[[cameras]]\nid = "cam"\nsource = "test-pattern"\nwidth = 160\nheight = 120\nfps = 10\n'
)


def ws_url(broker: Broker) -> str:
    return f"ws://127.0.0.1:{broker.port}/ws"


async def take(client: broker_client.Client, count: int, camera: str | None = None) -> list[Frame]:
    frames: list[Frame] = []
    async for frame in client.frames(camera):
        frames.append(frame)
        if len(frames) == count:
            break
    return frames


async def wait_until(predicate: Callable[[], object], within: float = 10) -> None:
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.05)


async def test_frames_carry_their_headers() -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        with trio.fail_after(20):
            async with broker_client.connect(ws_url(broker)) as client, trio.open_nursery() as n:
                reply = await client.subscribe("a")
                assert reply["type"] == "subscribed" and reply["camera"] == "a"
                assert reply["max_fps"] is None and client.subscriptions == {"a": None}
                n.start_soon(pub.stream, "a", 20.0, SMALL, 320, 240)
                frames = await take(client, 5)
                n.cancel_scope.cancel()
    for frame in frames:
        assert (frame.camera, frame.format, frame.width, frame.height) == ("a", "jpeg", 320, 240)
        assert not frame.placeholder
        stamped = stamp.read(frame.data)  # what the publisher stamped in the JPEG
        assert stamped is not None
        seq, captured_at = stamped
        assert frame.seq == seq and abs(frame.captured_at - captured_at) < 1e-5
        assert 0 <= frame.latency < 2
        assert frame.header["seq"] == frame.seq
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    stats = client.stats
    assert stats.frames >= 5 and stats.messages >= stats.frames + 1
    assert stats.reconnects == stats.errors == stats.dropped == 0


async def test_two_cameras_on_one_connection() -> None:
    async with (
        running_broker(config(TWO_CAMERAS)) as broker,
        publisher(broker) as pub_a,
        publisher(broker) as pub_b,
    ):
        with trio.fail_after(30):
            async with broker_client.connect(ws_url(broker)) as client, trio.open_nursery() as n:
                n.start_soon(pub_a.stream, "a", 20.0, SMALL, 320, 240)
                n.start_soon(pub_b.stream, "b", 20.0, SMALL, 320, 240)
                await client.subscribe("a")
                await client.subscribe("b", max_fps=4)
                assert client.subscriptions == {"a": None, "b": 4}
                seen: dict[str, int] = {"a": 0, "b": 0}
                with trio.move_on_after(2.0):
                    async for frame in client.frames():
                        seen[frame.camera] += 1
                assert seen["a"] >= 20, seen  # 20 fps for 2 s, give or take a slow machine
                assert 2 <= seen["b"] <= 12, seen  # capped at 4 fps
                only_b = await take(client, 3, "b")
                assert {f.camera for f in only_b} == {"b"}

                await client.unsubscribe("a")
                assert client.subscriptions == {"b": 4}
                after = await take(client, 4)
                assert {f.camera for f in after} == {"b"}
                n.cancel_scope.cancel()


async def test_handlers_run_beside_frames_and_are_counted() -> None:
    subscribed: list[dict[str, Any]] = []
    kinds: list[str] = []
    finished: list[int] = []

    async def slow(frame: Frame) -> None:
        await trio.sleep(1.0)
        finished.append(frame.seq)

    def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("a handler bug")

    async with running_broker(config()) as broker, publisher(broker) as pub:
        with trio.fail_after(30):
            async with (
                broker_client.connect(ws_url(broker), max_handler_tasks=3) as client,
                trio.open_nursery() as n,
            ):
                client.on("subscribed", subscribed.append)
                client.on("frame", slow)
                client.on("pong", broken)
                client.on_any(lambda message: kinds.append(message["type"]))
                client.on("connected", kinds.append)  # only for our own "connected": not called

                await client.subscribe("a")
                n.start_soon(pub.stream, "a", 20.0, SMALL, 320, 240)
                started = trio.current_time()
                frames = await take(client, 20)
                elapsed = trio.current_time() - started
                await client.ping()  # its handler raises: logged, counted, nothing else
                await wait_until(lambda: len(finished) >= 3)
                n.cancel_scope.cancel()
                client.off("frame", slow)

    # Three slow handler calls at a time: frames kept flowing at 20 fps, other calls skipped.
    assert len(frames) == 20 and elapsed < 4, elapsed
    stats = client.stats
    assert stats.handlers_skipped >= 10 and stats.handler_errors == 1
    assert subscribed[0]["camera"] == "a"
    assert kinds[:1] == ["subscribed"] and "pong" in kinds  # broker messages only
    assert "connected" not in kinds


async def test_client_queue_drops_oldest_and_sequence_gaps_are_counted() -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        with trio.fail_after(20):
            async with broker_client.connect(ws_url(broker), frame_queue=3) as client:
                await client.subscribe("a")
                for _ in range(10):  # paced, so the broker itself drops nothing
                    pub.send("a", SMALL, 320, 240)
                    await trio.sleep(0.05)
                await wait_until(lambda: client.stats.frames == 10)
                assert client.stats.dropped == 7 and client.stats.gaps == 0
                assert [f.seq for f in await take(client, 3)] == [7, 8, 9]  # the newest

                pub.seq = 20  # the worker skipped 10..19
                pub.send("a", SMALL, 320, 240)
                assert [f.seq for f in await take(client, 1)] == [20]
    stats = client.stats
    assert (stats.frames, stats.dropped, stats.gaps, stats.drops) == (11, 7, 10, 17)


async def test_error_answers_raise_and_leave_the_connection_up() -> None:
    async with running_broker(config()) as broker:
        with trio.fail_after(20):
            async with broker_client.connect(ws_url(broker)) as client:
                with pytest.raises(BrokerError) as unknown:
                    await client.subscribe("nope")
                assert unknown.value.code == "unknown_camera" and "nope" in unknown.value.message
                assert unknown.value.request_id is not None
                assert client.subscriptions == {}
                with pytest.raises(BrokerError, match="not_subscribed"):
                    await client.unsubscribe("a")
                with pytest.raises(BrokerError, match="unknown_command"):
                    await client.command("a", "self_destruct")
                # A camera with no worker: the broker answers, the camera side failed.
                result = await client.command("a", "get_status")
                assert not result.success and result.error == "not_connected"
                assert result.camera == "a" and result.command == "get_status"
                assert await client.ping() < 2
                cameras = await client.list_cameras()
                assert [c["id"] for c in cameras] == ["a"]
                stats = await client.get_stats()
                assert stats["status"] == "ok" and "type" not in stats
    assert client.stats.errors == 3 and client.stats.reconnects == 0


@asynccontextmanager
async def silent_worker(broker: Broker, camera: str) -> AsyncIterator[None]:
    """A worker that says hello and sends heartbeats but never answers a command."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, camera.encode())
    dealer.connect(broker.control_endpoints[-1])
    dealer.send(
        control.encode(
            "hello",
            camera=camera,
            device="silent",
            supported=settings.supported(),
            settings=settings.defaults(),
            streaming=True,
            pid=os.getpid(),
        )
    )

    async def heartbeats() -> None:
        while True:
            dealer.send(control.encode("heartbeat"), zmq.NOBLOCK)
            await trio.sleep(0.5)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeats)
            yield
            nursery.cancel_scope.cancel()
    finally:
        context.destroy(linger=0)


async def test_a_request_without_answer_times_out() -> None:
    cfg = config(control="command_timeout = 5.0")
    async with running_broker(cfg) as broker, silent_worker(broker, "a"):
        with trio.fail_after(20):
            async with broker_client.connect(ws_url(broker), request_timeout=0.5) as client:
                await wait_until(lambda: broker.control.connected("a"))
                started = trio.current_time()
                with pytest.raises(RequestTimeout) as timeout:
                    await client.command("a", "get_status")
                assert 0.5 <= trio.current_time() - started < 2
                assert isinstance(timeout.value, TimeoutError) and timeout.value.code == "timeout"
                # The broker answers later (its own timeout); the client ignores that answer.
                late: list[dict[str, Any]] = []
                client.on("command_result", late.append)
                assert await client.ping() < 2
                await wait_until(lambda: late, within=10)
                assert late[0]["error"] == "timeout" and client.connected


@asynccontextmanager
async def stoppable_broker(
    cfg: configuration.Config,
) -> AsyncIterator[tuple[Broker, trio.CancelScope]]:
    """A broker in-process that the test can shut down (cancel the scope) while it goes on."""
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Broker]) -> None:
        with scope:
            await Broker(cfg).run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        yield await nursery.start(run), scope
        scope.cancel()


async def test_pending_and_new_requests_fail_with_connection_lost() -> None:
    cfg = config(control="command_timeout = 30.0")
    with trio.fail_after(30):
        async with stoppable_broker(cfg) as (broker, stop), silent_worker(broker, "a"):
            await wait_until(lambda: broker.control.connected("a"))
            async with broker_client.connect(ws_url(broker), backoff_initial=5.0) as client:
                failures: list[ConnectionLost] = []

                async def pending_command() -> None:
                    try:
                        await client.command("a", "get_status")
                    except ConnectionLost as exc:
                        failures.append(exc)

                async with trio.open_nursery() as commands:
                    commands.start_soon(pending_command)
                    await trio.sleep(0.3)
                    stop.cancel()  # the broker shuts down: 1001 to every client
                assert len(failures) == 1 and failures[0].code == "connection_lost"
                await wait_until(lambda: not client.connected)
                started = trio.current_time()
                with pytest.raises(ConnectionLost):  # at once, not after a timeout
                    await client.ping()
                assert trio.current_time() - started < 0.5


async def test_without_reconnection_frames_end_with_connection_lost() -> None:
    with trio.fail_after(20):
        async with stoppable_broker(config()) as (broker, stop):
            async with broker_client.connect(ws_url(broker), reconnect=False) as client:
                await client.subscribe("a")
                stop.cancel()
                with pytest.raises(ConnectionLost):
                    async for _ in client.frames():
                        pass
                with pytest.raises(ConnectionLost):
                    await client.ping()


TOKENS = (
    '[[tokens]]\ntoken = "viewer-secret"\nrole = "viewer"\n'
    '[[tokens]]\ntoken = "operator-secret"\nrole = "operator"\n'
    '[[tokens]]\ntoken = "only-b-secret"\nrole = "operator"\ncameras = ["b"]\n'
)


async def test_a_refused_token_is_an_auth_error_and_not_retried() -> None:
    async with running_broker(config(TWO_CAMERAS + TOKENS)) as broker:
        url = ws_url(broker)
        with trio.fail_after(20):
            for token in (None, "wrong-secret"):
                started = trio.current_time()
                with pytest.raises(AuthError) as refused:
                    async with broker_client.connect(url, token):
                        pass
                assert refused.value.status == 401 and refused.value.code == "unauthorized"
                assert isinstance(refused.value, ConnectError)
                assert trio.current_time() - started < 2  # no retries
            async with broker_client.connect(url, "viewer-secret") as client:
                await client.subscribe("a")
                with pytest.raises(BrokerError) as forbidden:
                    await client.command("a", "get_status")
                assert forbidden.value.code == "forbidden"
            async with broker_client.connect(url, "only-b-secret") as client:
                with pytest.raises(BrokerError, match="forbidden"):
                    await client.subscribe("a")
                assert (await client.subscribe("b"))["camera"] == "b"
            async with broker_client.connect(url + "?token=operator-secret") as client:
                assert (await client.command("a", "get_status")).error == "not_connected"


async def test_connect_errors_are_clear() -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectError, match="cannot connect"):
            async with broker_client.connect("ws://127.0.0.1:1/ws"):
                pass
        async with running_broker(config()) as broker:
            with pytest.raises(ConnectError, match="404") as refused:
                async with broker_client.connect(f"ws://127.0.0.1:{broker.port}/cameras/zz"):
                    pass
            assert not isinstance(refused.value, AuthError)
    with pytest.raises(ValueError, match="ws://"):
        broker_client.Client("http://127.0.0.1:8765/ws")


async def test_commands_reach_a_real_worker() -> None:
    events: list[dict[str, Any]] = []
    async with running_broker(config(WORKER_CAMERA)) as broker:
        with trio.fail_after(60):
            async with broker_client.connect(ws_url(broker)) as client:
                client.on("event", events.append)
                await wait_until(lambda: broker.control.connected("cam"), within=30)
                status = await client.get_status("cam")
                assert status.success and status.settings["brightness"] == 50
                assert status.request_id and status.timestamp > time.time() - 60

                result = await client.command("cam", "update_settings", brightness=60)
                assert result.success and result.settings["brightness"] == 60
                assert result.command == "update_settings" and result.camera == "cam"

                bad = await client.update_settings("cam", brightness=500, contrast=70)
                assert not bad.success and bad.error == "invalid_settings"
                assert set(bad.errors or {}) == {"brightness"}
                assert bad.settings["brightness"] == 60 and bad.settings["contrast"] == 50

                preset = await client.apply_preset("cam", "night")
                assert preset.success and preset.settings["brightness"] == 30
                assert preset.settings["contrast"] == 60
                unknown = await client.apply_preset("cam", "nope")
                assert not unknown.success and unknown.error == "unknown_preset"

                await wait_until(lambda: sum(e["event"] == "settings_changed" for e in events) >= 2)
    changed = [e for e in events if e["event"] == "settings_changed"]
    assert changed[0]["camera"] == "cam" and changed[0]["data"]["settings"]["brightness"] == 60


async def test_subscriptions_resume_after_the_broker_restarts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, synthetic_camera("cam", 160, 120, 10))
    first = BrokerProcess(cfg)
    second = BrokerProcess(cfg, port=first.port, log=tmp_path / "second.log")
    connections: list[dict[str, Any]] = []
    try:
        await trio.to_thread.run_sync(first.start)
        await trio.to_thread.run_sync(first.wait_online, "cam")
        url = f"ws://127.0.0.1:{first.port}/ws"
        with trio.fail_after(90):
            async with broker_client.connect(url, backoff_max=2.0) as client:
                client.on("connected", connections.append)
                client.on("disconnected", connections.append)
                await client.subscribe("cam", max_fps=5)
                before = [f for f in await take(client, 3) if not f.placeholder]
                assert before

                await trio.to_thread.run_sync(first.stop)
                await wait_until(lambda: not client.connected, within=10)
                restarted = time.time()
                await trio.to_thread.run_sync(second.start)
                after: list[Frame] = []
                async for frame in client.frames():  # frames of the new broker's worker
                    if frame.received_at > restarted and not frame.placeholder:
                        after.append(frame)
                    if len(after) == 3:
                        break
                assert client.stats.reconnects >= 1 and client.subscriptions == {"cam": 5}
    finally:
        for process in (first, second):
            if process.process is not None:
                await trio.to_thread.run_sync(process.stop)
    kinds = [(c["type"], c.get("reconnect")) for c in connections]
    assert kinds[:2] == [("disconnected", None), ("connected", True)], kinds


async def test_a_hung_broker_is_detected_by_the_keepalive(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, synthetic_camera("cam", 160, 120, 10))
    broker = BrokerProcess(cfg)
    connections: list[dict[str, Any]] = []
    try:
        await trio.to_thread.run_sync(broker.start)
        await trio.to_thread.run_sync(broker.wait_online, "cam")
        assert broker.process is not None
        url = f"ws://127.0.0.1:{broker.port}/ws"
        options: dict[str, Any] = {
            "keepalive": 1.0,
            "request_timeout": 1.0,
            "connect_timeout": 2.0,
            "backoff_max": 1.0,
        }
        with trio.fail_after(60):
            async with broker_client.connect(url, **options) as client:
                client.on("disconnected", connections.append)
                client.on("connected", connections.append)
                await client.subscribe("cam")
                await take(client, 2)
                broker.process.send_signal(signal.SIGSTOP)  # the socket stays open, silent
                stopped = trio.current_time()
                await wait_until(lambda: connections, within=10)
                assert connections[0]["type"] == "disconnected"
                assert trio.current_time() - stopped < 5  # 1 s silence + 1 s for a pong
                broker.process.send_signal(signal.SIGCONT)
                await wait_until(lambda: client.connected and client.stats.reconnects, within=30)
                resumed = time.time()
                async for frame in client.frames():  # frames flow again
                    if frame.received_at > resumed and not frame.placeholder:
                        break
    finally:
        if broker.process is not None:
            broker.process.send_signal(signal.SIGCONT)  # SIGTERM waits while it is stopped
            await trio.to_thread.run_sync(broker.stop)


async def test_leaving_closes_normally_and_frames_end() -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(pub.stream, "a", 20.0, SMALL, 320, 240)
                async with broker_client.connect(ws_url(broker), close_timeout=5) as client:
                    await client.subscribe("a")
                    await take(client, 2)
                    stream = client.frames()
                    leaving = trio.current_time()
                # The broker answered our close (1000) at once: no wait for close_timeout.
                assert trio.current_time() - leaving < 2.5
                started = trio.current_time()
                leftover = [f async for f in stream]  # what was queued, then the end
                assert len(leftover) <= 8
                assert trio.current_time() - started < 1
                await wait_until(lambda: broker.hub.client_count == 0)
                n.cancel_scope.cancel()


def test_decode_frame_rejects_bad_messages() -> None:
    header = b'{"camera":"a","seq":1,"captured_at":1.5,"format":"jpeg","width":2,"height":3}'
    frame = broker_client.decode_frame(len(header).to_bytes(2, "big") + header + b"IMG", 9.0)
    assert (frame.camera, frame.seq, frame.data, frame.latency) == ("a", 1, b"IMG", 7.5)
    for bad in (b"", b"\x00", b"\x00\x09{}", b"\x00\x02{}IMG", b"\x00\x02[]"):
        with pytest.raises(ValueError):
            broker_client.decode_frame(bad)


def test_frame_queues_drop_oldest_per_camera_and_keep_arrival_order() -> None:
    def frame(camera: str, seq: int) -> Frame:
        return Frame(camera, seq, 0.0, "jpeg", 1, 1, b"", 0.0)

    queues = FrameQueues(2)
    queues.open("a")
    queues.open("b")
    for camera, seq in (("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 3)):
        assert queues.put(frame(camera, seq))
    assert not queues.put(frame("c", 1))  # no queue: not subscribed
    assert (queues.dropped, queues.gaps) == (1, 1)  # a1 pushed out; b2 never came
    taken = [queues.next(None) for _ in range(4)]
    assert [(f.camera, f.seq) for f in taken if f] == [("b", 1), ("a", 2), ("a", 3), ("b", 3)]
    assert queues.next(None) is None and queues.next("a") is None
