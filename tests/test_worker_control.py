"""The worker's side of the control channel: a real `camera-worker` process, with the
test playing the broker on a real ROUTER (control, over ipc) and a real SUB (frames)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from broker.protocol import control, settings, wire
from cameras.link import Liveness, salvage_request_id
from cameras.sources.testpattern import TestPattern

Frame = tuple[wire.FrameHeader, bytes]


def decoded(parts: list[bytes]) -> Frame:
    """A received frame message, checked; its payload is the part received (bytes)."""
    return cast(Frame, wire.decode(parts, 1 << 24))


class FakeBroker:
    """A ROUTER for control and a SUB for frames, both bound by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.context = zmq.Context()
        self.endpoint = f"ipc://{tmp_path / 'control.ipc'}"
        self.router = self.bind_router()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.bind("tcp://127.0.0.1:*")
        self.frames_endpoint = self.sub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replies: Counter[str] = Counter()  # request id → replies seen
        self.ids = itertools.count(1)
        self.log = tmp_path / "worker.log"

    def bind_router(self) -> zmq.Socket:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.bind(self.endpoint)
        return router

    def restart(self) -> None:
        """The broker goes away and a new one binds the same endpoint."""
        self.router.close(linger=0)
        self.router = self.bind_router()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next control message (any type), or None after ``timeout`` seconds."""
        if not self.router.poll(int(timeout * 1000)):
            return None
        identity, payload = self.router.recv_multipart()
        assert identity == b"cam"
        message = control.decode(payload)
        if message["type"] == "reply":
            self.replies[message["request_id"]] += 1
        return message

    def wait_for(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and message["type"] == kind:
                return message
        raise TimeoutError(f"no {kind} within {timeout} s")

    def send(self, kind: str, **fields: Any) -> None:
        self.send_raw(control.encode(kind, **fields))

    def send_raw(self, *parts: bytes) -> None:
        self.router.send_multipart([b"cam", *parts])

    def command(self, name: str, /, *, timeout: float = 10, **changes: Any) -> dict[str, Any]:
        request_id = str(next(self.ids))
        self.send("command", request_id=request_id, command=name, settings=changes)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message and message["type"] == "reply" and message["request_id"] == request_id:
                return message
        raise TimeoutError(f"no reply to {name} within {timeout} s")

    def frames(self, count: int, timeout: float = 10) -> list[Frame]:
        received: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(int(left * 1000)):
                raise TimeoutError(f"{len(received)} of {count} frames within {timeout} s")
            received.append(decoded(self.sub.recv_multipart()))
        return received

    def frames_during(self, seconds: float) -> list[Frame]:
        received: list[Frame] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(int(left * 1000)):
                received.append(decoded(self.sub.recv_multipart()))
        return received

    def frames_after(self, moment: float, count: int, timeout: float = 10) -> list[Frame]:
        """The next ``count`` frames captured after ``moment`` (Unix time): frames still
        in flight from before are skipped."""
        received: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            frame = self.frames(1, max(0.1, deadline - time.monotonic()))[0]
            if frame[0].captured_at > moment:
                received.append(frame)
        return received

    def close(self) -> None:
        self.context.destroy(linger=0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[FakeBroker]:
    fake = FakeBroker(tmp_path)
    try:
        yield fake
    finally:
        fake.close()


@contextmanager
def worker(
    broker: FakeBroker,
    *args: str,
    heartbeat: float = 0.5,
    source: str = "test-pattern",
    size: tuple[int, int] | None = (320, 240),
    fps: float = 10,
) -> Iterator[subprocess.Popen[bytes]]:
    sizes = ["--width", str(size[0]), "--height", str(size[1])] if size else []
    with open(broker.log, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cameras.worker",
                "--broker",
                broker.frames_endpoint,
                "--camera-id",
                "cam",
                "--source",
                source,
                *sizes,
                "--fps",
                f"{fps:g}",
                "--control",
                broker.endpoint,
                "--heartbeat",
                f"{heartbeat:g}",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def mean_of(frames: list[Frame]) -> float:
    return float(np.mean([decode(payload).mean() for _, payload in frames]))


def decode(payload: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def expected_settings(**changes: Any) -> dict[str, Any]:
    worker_keys = settings.split(settings.defaults())[0]  # the broker's own keys aside
    return {**worker_keys, "width": 320, "height": 240, "fps": 10.0, **changes}


# -- pure parts -----------------------------------------------------------------


def test_liveness_beats_once_per_interval_and_owes_a_hello_after_silence() -> None:
    live = Liveness(1.0, now=100.0)
    assert not live.beat_due(100.5)
    assert live.beat_due(101.0) and not live.beat_due(101.2)
    assert live.beat_due(105.0) and not live.beat_due(105.5)  # late: one beat, no burst
    assert not live.heard(102.0)  # heard while alive: no hello owed
    assert not live.check(104.9)
    assert live.check(105.1) and not live.check(106)  # said once
    assert live.heard(107.0)  # back: a hello is owed, once
    assert not live.heard(107.5)


def test_salvage_request_id_only_from_commands() -> None:
    assert salvage_request_id(msgpack.packb({"type": "command", "request_id": "7"})) == "7"
    assert salvage_request_id(msgpack.packb({"type": "command", "request_id": 7})) is None
    assert salvage_request_id(msgpack.packb({"type": "heartbeat", "request_id": "7"})) is None
    assert salvage_request_id(b"\xc1 not msgpack") is None


# -- real processes ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hello_then_heartbeats_and_hello_on_request(broker: FakeBroker) -> None:
    with worker(broker, heartbeat=0.3) as process:
        hello = broker.wait_for("hello")
        assert hello["camera"] == "cam"
        assert hello["device"] == "test pattern 320x240"
        assert hello["supported"] == settings.worker_supported()
        assert hello["settings"] == expected_settings()
        assert hello["streaming"] is True
        assert hello["pid"] == process.pid
        beats = []
        deadline = time.monotonic() + 2.0
        while (left := deadline - time.monotonic()) > 0:
            message = broker.receive(left)
            if message is not None:
                assert message["type"] == "heartbeat"
                assert message["streaming"] is True
                beats.append(time.monotonic())
        assert 4 <= len(beats) <= 9, beats  # about every 0.3 s
        broker.send("hello_request")
        assert broker.wait_for("hello", timeout=5)["pid"] == process.pid


@pytest.mark.timeout(60)
def test_brightness_raises_the_mean_of_the_frames_that_follow(broker: FakeBroker) -> None:
    with worker(broker):
        broker.wait_for("hello")
        before = mean_of(broker.frames(3))
        reply = broker.command("update_settings", brightness=80)
        assert reply["success"] is True, reply
        assert reply["settings"] == expected_settings(brightness=80)
        assert reply["streaming"] is True
        assert reply["timestamp"] == pytest.approx(time.time(), abs=5)
        after = mean_of(broker.frames_after(reply["timestamp"], 3))
        assert after > before + 40, (before, after)
        reply = broker.command("update_settings", brightness=50)
        assert mean_of(broker.frames_after(reply["timestamp"], 3)) == pytest.approx(before, abs=5)


@pytest.mark.timeout(60)
def test_a_resolution_change_gives_frames_of_the_new_size_without_a_gap(
    broker: FakeBroker,
) -> None:
    with worker(broker, fps=10):
        broker.wait_for("hello")
        broker.frames(2)
        reply = broker.command("update_settings", width=480, height=360)
        assert reply["success"] is True
        assert (reply["settings"]["width"], reply["settings"]["height"]) == (480, 360)
        received = broker.frames(15)
        sizes = [(h.width, h.height) for h, _ in received]
        assert sizes[-1] == (480, 360) and sizes.count((480, 360)) >= 10, sizes
        switched = sizes.index((480, 360))
        assert all(s == (320, 240) for s in sizes[:switched]), sizes
        assert all(s == (480, 360) for s in sizes[switched:]), sizes
        for header, payload in received:
            assert decode(payload).shape[1::-1] == (header.width, header.height)
        seqs = [h.seq for h, _ in received]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the same stream, no gap
        captured = [h.captured_at for h, _ in received]
        gaps = np.diff(captured)
        # 10 fps: about 0.1 s apart, across the change too (generous for a loaded machine).
        assert gaps.max() < 0.35, gaps
        only_width = broker.command("update_settings", width=400)
        assert only_width["settings"]["height"] == 360  # the other one is kept
        frame = broker.frames_after(only_width["timestamp"], 1)[0]
        assert decode(frame[1]).shape[:2] == (360, 400)


@pytest.mark.timeout(60)
def test_a_folder_source_is_resized_and_adjusted_in_software(
    broker: FakeBroker, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for seq in range(3):
        cv2.imwrite(str(folder / f"{seq}.png"), TestPattern(200, 100).draw(seq, 1000.0))
    with worker(broker, source=str(folder), size=None):
        hello = broker.wait_for("hello")
        assert hello["device"] == f"images in {folder}"
        assert "width" not in hello["settings"]  # not known before the first frame
        before = mean_of(broker.frames(3))
        status = broker.command("get_status")
        assert (status["settings"]["width"], status["settings"]["height"]) == (200, 100)
        reply = broker.command(
            "update_settings", width=100, height=50, saturation=0, brightness=30, format="png"
        )
        assert reply["success"] is True, reply
        frames = broker.frames_after(reply["timestamp"], 3)
        for header, payload in frames:
            assert (header.width, header.height, header.format) == (100, 50, "png")
            image = decode(payload)
            assert image.shape == (50, 100, 3)
            assert np.ptp(image.astype(int), axis=2).mean() < 2  # grey
        assert mean_of(frames) < before - 20


@pytest.mark.timeout(90)
def test_an_invalid_change_is_refused_naming_the_key_and_changes_nothing(
    broker: FakeBroker,
) -> None:
    with worker(broker):
        broker.wait_for("hello")
        before = mean_of(broker.frames(3))
        cases: list[tuple[dict[str, Any], str]] = [
            ({"brightness": 101}, "brightness"),  # out of range
            ({"brightness": "high"}, "brightness"),  # wrong type
            ({"fps": True}, "fps"),  # a bool is not a number
            ({"zoom": 2}, "zoom"),  # unknown key
            ({"brightness": 90, "width": 640, "contrast": -1}, "contrast"),  # one bad: none apply
            ({"format": "gif", "quality": 10}, "format"),
        ]
        for changes, key in cases:
            reply = broker.command("update_settings", **changes)
            assert reply["success"] is False, changes
            assert key in reply["message"] and key in reply["errors"], reply
            assert reply["settings"] == expected_settings(), changes
        status = broker.command("get_status")
        assert status["success"] is True and status["settings"] == expected_settings()
        frames = broker.frames_after(status["timestamp"], 3)
        assert all((h.width, h.height, h.format) == (320, 240, "jpeg") for h, _ in frames)
        assert mean_of(frames) == pytest.approx(before, abs=5)


@pytest.mark.timeout(60)
def test_stop_stream_publishes_nothing_and_start_stream_resumes_within_a_second(
    broker: FakeBroker,
) -> None:
    with worker(broker, heartbeat=0.3):
        broker.wait_for("hello")
        broker.frames(2)
        reply = broker.command("stop_stream")
        assert (reply["success"], reply["streaming"]) == (True, False)
        late = [f for f in broker.frames_during(1.5) if f[0].captured_at > reply["timestamp"]]
        assert late == []
        again = broker.command("stop_stream")
        assert (again["success"], again["streaming"]) == (True, False)  # idempotent
        assert broker.wait_for("heartbeat")["streaming"] is False
        assert broker.command("get_status")["streaming"] is False
        asked = time.monotonic()
        reply = broker.command("start_stream")
        assert (reply["success"], reply["streaming"]) == (True, True)
        broker.frames(1, timeout=5)
        assert time.monotonic() - asked < 1.0
        assert broker.command("start_stream")["success"] is True  # idempotent
        broker.frames(5)


@pytest.mark.timeout(60)
def test_paused_worker_publishes_nothing_until_start_stream(broker: FakeBroker) -> None:
    with worker(broker, "--paused"):
        hello = broker.wait_for("hello")
        assert hello["streaming"] is False
        assert hello["settings"] == expected_settings()
        assert broker.frames_during(1.5) == []
        asked = time.monotonic()
        assert broker.command("start_stream")["streaming"] is True
        broker.frames(1, timeout=5)
        assert time.monotonic() - asked < 1.0


@pytest.mark.timeout(60)
def test_restart_camera_replies_after_reopening_and_frames_go_on(broker: FakeBroker) -> None:
    with worker(broker):
        broker.wait_for("hello")
        broker.command("update_settings", brightness=70, name="hall")
        last = broker.frames(2)[-1][0].seq
        reply = broker.command("restart_camera")
        assert (reply["success"], reply["message"], reply["streaming"]) == (True, "restarted", True)
        assert reply["settings"] == expected_settings(brightness=70, name="hall")
        frames = broker.frames_after(reply["timestamp"], 3)
        assert frames[0][0].seq > last  # one stream: sequence numbers go on


@pytest.mark.timeout(60)
def test_malformed_control_messages_are_ignored_while_frames_flow(broker: FakeBroker) -> None:
    with worker(broker) as process:
        broker.wait_for("hello")
        broker.frames(2)
        garbage = [
            (b"\xc1 not msgpack",),
            (msgpack.packb([1, 2, 3]),),
            (msgpack.packb({"type": "launch", "version": 1}),),
            (msgpack.packb({"type": "command", "version": 1, "command": "get_status"}),),
            (msgpack.packb({"type": "reply", "version": 1}),),
            (control.encode("heartbeat"), b"a second part"),
            (b"\x00" * (control.MAX_MESSAGE_BYTES + 1),),
        ]
        started = time.monotonic()
        for _ in range(5):
            for parts in garbage:
                broker.send_raw(*parts)
        # A command with a request id but broken fields still gets its one answer.
        broker.send_raw(
            msgpack.packb(
                {
                    "type": "command",
                    "version": 1,
                    "request_id": "bad",
                    "command": "self_destruct",
                    "settings": {},
                }
            )
        )
        broker.send_raw(msgpack.packb({"type": "command", "version": 99, "request_id": "old"}))
        frames = broker.frames(10)
        assert time.monotonic() - started < 5
        assert [h.seq for h, _ in frames] == list(range(frames[0][0].seq, frames[0][0].seq + 10))
        assert process.poll() is None
        assert broker.command("get_status")["success"] is True
        broker.frames_during(0.5)
        while broker.receive(0.2) is not None:
            pass
        assert (broker.replies["bad"], broker.replies["old"]) == (1, 1)  # exactly one each
        log = broker.log.read_text()
        assert "unknown command 'self_destruct'" in log
        assert log.count("ignoring a malformed message") <= 2, log  # rate-limited


@pytest.mark.timeout(60)
def test_every_command_gets_exactly_one_reply(broker: FakeBroker) -> None:
    with worker(broker, heartbeat=0.3):
        broker.wait_for("hello")
        for name in control.COMMANDS:
            reply = broker.command(name)
            assert reply["success"] is True, reply
            assert set(reply) >= {
                "request_id",
                "success",
                "message",
                "settings",
                "streaming",
                "timestamp",
            }
        broker.frames_during(1.0)
        while broker.receive(0.2) is not None:
            pass
        assert set(broker.replies.values()) == {1}


@pytest.mark.timeout(60)
def test_a_broker_that_goes_away_and_comes_back_gets_a_fresh_hello(broker: FakeBroker) -> None:
    with worker(broker, heartbeat=0.3) as process:
        broker.wait_for("hello")
        broker.wait_for("heartbeat")
        broker.restart()  # a quick restart: the worker has not noticed; the broker asks
        broker.wait_for("heartbeat", timeout=5)
        broker.send("hello_request")
        assert broker.wait_for("hello", timeout=5)["pid"] == process.pid
        broker.router.close(linger=0)  # gone for longer than 3 heartbeats
        time.sleep(1.5)
        broker.router = broker.bind_router()
        broker.wait_for("heartbeat", timeout=5)  # the worker kept sending
        broker.send("heartbeat")  # the broker speaks again
        hello = broker.wait_for("hello", timeout=5)
        assert hello["pid"] == process.pid and hello["streaming"] is True
        assert broker.command("get_status")["success"] is True
        broker.frames(3)  # frames never stopped
