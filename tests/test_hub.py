"""The fan-out core (broker/core: hub, camera, subscriber) and the shared Frame
(broker/core/frame.py); how a sender waits for its frames (broker/serve/delivery.py)."""

from __future__ import annotations

import struct
from typing import cast

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol, Opcode

from broker.core.camera import Camera, CameraInfo
from broker.core.frame import JOIN_BELOW, Buffer, Frame, websocket_binary_header
from broker.core.hub import Hub, Outcome, UnknownCamera
from broker.core.subscriber import RateMeter, Subscriber
from broker.serve.delivery import Waiter

OFFLINE_AFTER = 2.0
CLOCK_OFFSET = 1_763_699_900.0  # a camera's Unix time minus our monotonic time


def frame(
    camera: str = "a",
    seq: int = 0,
    received_at: float = 100.0,
    *,
    width: int = 640,
    height: int = 480,
    format: str = "jpeg",
    data: Buffer = b"\xff\xd8\xffpayload",
    placeholder: bool = False,
) -> Frame:
    return Frame(
        camera=camera,
        seq=seq,
        captured_at=CLOCK_OFFSET + received_at,  # the camera's clock, in step with ours
        width=width,
        height=height,
        format=format,
        data=data,
        received_at=received_at,
        placeholder=placeholder,
    )


class Clock:
    """A settable stand-in for time.monotonic."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hub(*ids: str, clock: Clock | None = None, accept_unknown: bool = False) -> Hub:
    cameras = [CameraInfo(id, f"Camera {id.upper()}", 1280, 720) for id in ids or ("a",)]
    return Hub(
        cameras,
        offline_after=OFFLINE_AFTER,
        accept_unknown=accept_unknown,
        clock=clock or Clock(),
    )


def drain(subscriber: Subscriber) -> list[Frame]:
    frames = []
    while (item := subscriber.queue.get()) is not None:
        frames.append(item)
    return frames


def parse_header(message: bytes) -> tuple[bool, int, bool, int, int]:
    """(fin, opcode, masked, payload length, header length) of one RFC 6455 frame."""
    fin, opcode = bool(message[0] & 0x80), message[0] & 0x0F
    masked, length = bool(message[1] & 0x80), message[1] & 0x7F
    if length == 126:
        return fin, opcode, masked, struct.unpack(">H", message[2:4])[0], 4
    if length == 127:
        return fin, opcode, masked, struct.unpack(">Q", message[2:10])[0], 10
    return fin, opcode, masked, length, 2


# -- Frame ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header_length"), [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]
)
def test_websocket_message(length: int, header_length: int) -> None:
    data = bytes(i % 251 for i in range(length))
    item = frame(data=data)
    parts = item.websocket_message()
    message = b"".join(parts)
    fin, opcode, masked, parsed_length, parsed_header_length = parse_header(message)
    assert (fin, opcode, masked) == (True, 2, False)
    assert parsed_length == length
    assert parsed_header_length == header_length
    assert message[header_length:] == data
    assert websocket_binary_header(length) == message[:header_length]
    assert item.websocket_message() is parts  # built once, then shared


def test_large_payload_is_not_copied_into_its_messages() -> None:
    """From JOIN_BELOW on, every message is the header, the frame's own payload object
    and (MJPEG) a tail: the 17-25 MB of a 4K raw frame are never copied (issue 12)."""
    data = memoryview(bytes(JOIN_BELOW))
    item = frame(data=data)
    for parts in (item.websocket_message(), item.mux_message(), item.mjpeg_part()):
        assert parts[1] is data
        assert sum(len(part) for part in parts) - len(data) < 200  # headers only
    joined = frame(data=data[1:]).websocket_message()[0]
    assert isinstance(joined, bytes) and joined.endswith(bytes(data[1:]))  # joined


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_websocket_message_parses_with_wsproto(length: int) -> None:
    """An independent client-side parser reads one final binary message."""
    data = b"\x5a" * length
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(b"".join(frame(data=data).websocket_message()))
    frames = list(protocol.received_frames())
    assert {f.opcode for f in frames[:1]} == {Opcode.BINARY}
    assert frames[-1].message_finished
    assert b"".join(cast(bytes, f.payload) for f in frames) == data  # binary: bytes


def test_websocket_message_from_memoryview_data() -> None:
    data = memoryview(b"\xff\xd8\xff" + b"x" * 200)
    (message,) = frame(data=data).websocket_message()  # small: one joined buffer
    assert isinstance(message, bytes)
    assert message == websocket_binary_header(203) + bytes(data)


def test_frame_size_and_identity_equality() -> None:
    first, second = frame(data=b"12345"), frame(data=b"12345")
    assert first.size == 5
    assert first != second  # eq=False: frames compare by identity
    assert first == first


# -- Hub.publish ----------------------------------------------------------------------


def test_publish_to_unknown_camera_is_rejected_and_counted() -> None:
    h = hub("a")
    assert h.publish(frame("zz")) is Outcome.UNKNOWN
    assert h.publish(frame("zz", seq=1)) is Outcome.UNKNOWN
    assert h.rejected_unknown == 2
    assert "zz" not in h.cameras
    with pytest.raises(UnknownCamera):
        h.camera("zz")
    with pytest.raises(KeyError):
        h.subscribe("zz", "client", 4)


def test_publish_to_unknown_camera_creates_it_with_accept_unknown() -> None:
    h = hub("a", accept_unknown=True)
    item = frame("zz", width=320, height=200, format="png")
    assert h.publish(item) is Outcome.LIVE
    assert h.rejected_unknown == 0
    camera = h.camera("zz")
    assert camera.info == CameraInfo("zz", "zz", 320, 200, "png", configured=False)
    assert camera.latest is item
    assert camera.online
    assert camera.frames_received == 1


def test_publish_records_the_frame() -> None:
    h = hub("a")
    item = frame(received_at=123.5)
    assert h.publish(item) is Outcome.LIVE
    camera = h.camera("a")
    assert camera.latest is item
    assert camera.last_frame_at == 123.5
    assert camera.frames_received == 1
    assert camera.online
    assert camera.size == (640, 480)


def test_every_subscriber_gets_the_same_frame_object() -> None:
    h = hub("a", "b")
    subscribers = [h.subscribe("a", f"client{i}", 4) for i in range(3)]
    other = h.subscribe("b", "other", 4)
    item = frame()
    h.publish(item)
    for subscriber in subscribers:
        got = drain(subscriber)
        assert len(got) == 1
        assert got[0] is item
        assert got[0].data is item.data
    assert drain(other) == []
    assert h.client_count == 4


def test_slow_subscriber_drops_only_its_own_frames() -> None:
    h = hub("a")
    slow = h.subscribe("a", "slow", 2)
    fast = h.subscribe("a", "fast", 2)
    frames = [frame(seq=seq) for seq in range(5)]
    fast_got = []
    for item in frames:
        h.publish(item)
        fast_got += drain(fast)
    assert len(slow.queue) == 2
    assert slow.dropped == 3
    assert drain(slow) == frames[3:]
    assert fast.dropped == 0
    assert fast_got == frames


# -- subscribe, placeholders, offline -------------------------------------------------


def test_subscribe_gets_a_fresh_latest_frame_at_once() -> None:
    clock = Clock()
    h = hub("a", clock=clock)
    item = frame(received_at=100.0)
    h.publish(item)
    clock.now = 100.0 + OFFLINE_AFTER - 0.5
    subscriber = h.subscribe("a", "client", 4)
    assert drain(subscriber) == [item]
    assert subscriber in h.camera("a").subscribers
    assert subscriber.client == "client"
    assert subscriber.camera is h.camera("a")


@pytest.mark.parametrize("age", [OFFLINE_AFTER, OFFLINE_AFTER + 10])
def test_subscribe_does_not_get_a_stale_frame(age: float) -> None:
    clock = Clock()
    h = hub("a", clock=clock)
    h.publish(frame(received_at=100.0))
    clock.now = 100.0 + age
    assert drain(h.subscribe("a", "client", 4)) == []


def test_subscribe_before_any_frame_gets_nothing() -> None:
    assert drain(hub("a").subscribe("a", "client", 4)) == []


def test_placeholder_while_offline() -> None:
    clock = Clock()
    h = hub("a", clock=clock)
    camera = h.camera("a")
    watching = h.subscribe("a", "watching", 4)
    h.publish(frame(received_at=100.0))
    drain(watching)
    clock.now = 105.0
    assert h.mark_offline(clock.now) == [camera]
    placeholder = frame(received_at=105.0, placeholder=True)
    h.publish_placeholder(camera, placeholder)
    assert camera.placeholder is placeholder
    assert drain(watching) == [placeholder]
    assert drain(h.subscribe("a", "newcomer", 4)) == [placeholder]

    back = frame(seq=1, received_at=106.0)
    clock.now = 106.0
    h.publish(back)
    assert camera.placeholder is None
    assert drain(h.subscribe("a", "later", 4)) == [back]


def test_placeholder_for_a_camera_that_never_sent() -> None:
    h = hub("a")
    camera = h.camera("a")
    placeholder = frame(placeholder=True)
    h.publish_placeholder(camera, placeholder)
    assert drain(h.subscribe("a", "client", 4)) == [placeholder]


def test_mark_offline() -> None:
    h = hub("a", "b")
    a, b = h.camera("a"), h.camera("b")
    assert h.mark_offline(0.0) == [a, b]  # never seen: offline from the start
    h.publish(frame("a", received_at=10.0))
    assert h.mark_offline(10.0 + OFFLINE_AFTER - 0.1) == [b]
    assert a.online
    assert h.mark_offline(10.0 + OFFLINE_AFTER) == [a, b]
    assert not a.online
    assert h.mark_offline(20.0) == [a, b]  # still offline, no second transition
    h.publish(frame("a", received_at=21.0))
    assert a.online
    assert h.mark_offline(21.5) == [b]


def test_unsubscribe_removes_and_clears() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 4)
    stays = h.subscribe("a", "stays", 4)
    h.publish(frame(seq=0))
    h.publish(frame(seq=1))
    h.unsubscribe(subscriber)
    assert subscriber not in h.camera("a").subscribers
    assert len(subscriber.queue) == 0
    assert h.client_count == 1
    h.publish(frame(seq=2))
    assert len(subscriber.queue) == 0
    assert len(drain(stays)) == 3
    h.unsubscribe(subscriber)  # a second time is harmless
    assert h.client_count == 1


# -- Camera.summary and RateMeter -----------------------------------------------------


def test_summary_before_any_frame() -> None:
    camera = Camera(CameraInfo("a", "Camera A", 1280, 720, "png"))
    assert camera.summary(50.0) == {
        "id": "a",
        "name": "Camera A",
        "online": False,
        "fps": 0.0,
        "width": 1280,
        "height": 720,
        "format": "png",
        "clients": 0,
        "frames_received": 0,
        "last_frame_age_ms": None,
    }


def test_summary_while_online_and_after() -> None:
    h = hub("a")
    camera = h.camera("a")
    h.subscribe("a", "client", 4)
    for i in range(5):  # 2 fps for 2 s
        h.publish(frame(seq=i, received_at=i / 2, width=320, height=240, format="webp"))
    assert camera.summary(2.0) == {
        "id": "a",
        "name": "Camera A",
        "online": True,
        "fps": 2.0,
        "width": 320,
        "height": 240,
        "format": "webp",
        "clients": 1,
        "frames_received": 5,
        "last_frame_age_ms": 0,
    }
    assert camera.summary(2.25)["last_frame_age_ms"] == 250
    h.mark_offline(10.0)
    summary = camera.summary(10.0)
    assert summary["online"] is False
    assert summary["fps"] == 0.0
    assert summary["last_frame_age_ms"] == 8000
    assert (summary["width"], summary["height"], summary["format"]) == (320, 240, "webp")


def test_rate_meter_over_its_window() -> None:
    meter = RateMeter(window=2.0)
    for i in range(51):  # 10 per second for 5 s
        meter.tick(i / 10)
    assert meter.rate(5.0) == pytest.approx(10.0)


def test_rate_meter_needs_two_recent_ticks() -> None:
    meter = RateMeter(window=2.0)
    assert meter.rate(0.0) == 0.0
    meter.tick(1.0)
    assert meter.rate(1.0) == 0.0
    meter.tick(1.5)
    assert meter.rate(1.5) == pytest.approx(2.0)
    assert meter.rate(100.0) == 0.0  # everything aged out


def test_rate_meter_keeps_a_bounded_history() -> None:
    meter = RateMeter(window=10.0, keep=4)
    for i in range(100):
        meter.tick(i / 100)
    assert meter.rate(0.99) == pytest.approx(3 / (0.99 - 0.96))


def test_rate_meter_keeps_only_its_window() -> None:
    meter = RateMeter(window=2.0)
    for i in range(100):  # 100 s at 1 tick a second: a slow client's whole life
        meter.tick(float(i))
    assert len(meter._times) == 3  # 97, 98, 99: what the window needs, not all 100
    assert meter.rate(99.0) == pytest.approx(1.0)


def test_capped_subscriber_is_woken_only_by_a_frame_at_its_due_time() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 2)
    woken = trio.Event()
    subscriber.wake = woken.set
    subscriber.cap(1.0)
    subscriber.next_due = 200.0
    h.publish(frame(seq=1, received_at=199.5))  # before the due time: queued, no wake-up
    assert not woken.is_set()
    assert len(subscriber.queue) == 1
    h.publish(frame(seq=2, received_at=200.0))
    assert woken.is_set()
    subscriber.cap(None)
    assert subscriber.interval == 0.0


# -- waiting for frames (Waiter.next_frame, in broker.serve.delivery) ------------------


async def test_next_frame_returns_queued_frames_oldest_first() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 4)
    frames = [frame(seq=seq) for seq in range(3)]
    for item in frames:
        h.publish(item)
    waiter = Waiter(subscriber)
    with trio.fail_after(1):
        assert [await waiter.next_frame() for _ in frames] == frames


async def test_waiting_subscriber_wakes_when_a_frame_is_offered() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 4)
    got: list[Frame] = []
    waiter = Waiter(subscriber)

    async def wait() -> None:
        got.append(await waiter.next_frame())
        got.append(await waiter.next_frame())

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            first = frame(seq=0)
            h.publish(first)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [first]
            second = frame(seq=1)
            h.publish(second)
    assert got == [first, second]


async def test_next_frame_newest() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 8)
    frames = [frame(seq=seq) for seq in range(4)]
    for item in frames:
        h.publish(item)
    with trio.fail_after(1):
        assert await Waiter(subscriber).next_frame(newest=True) is frames[-1]
    assert subscriber.dropped == 3
    assert len(subscriber.queue) == 0


async def test_next_frame_newest_waits_then_returns_the_newest() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 8)
    got: list[Frame] = []

    async def wait() -> None:
        got.append(await Waiter(subscriber).next_frame(newest=True))

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            frames = [frame(seq=seq) for seq in range(3)]
            for item in frames:  # all offered before the waiter runs again
                h.publish(item)
    assert got == [frames[-1]]
    assert subscriber.dropped == 2


def test_delivered_counts() -> None:
    subscriber = hub("a").subscribe("a", "client", 4)
    subscriber.delivered(frame(data=b"x" * 10))
    subscriber.delivered(frame(data=b"x" * 5))
    assert (subscriber.sent, subscriber.bytes_sent) == (2, 15)


# -- hooks (used by the control plane: on-demand cameras, events) -------------------


def test_hooks_fire_on_transitions_only() -> None:
    clock = Clock()
    h = hub("a", "b", clock=clock)
    calls: list[tuple[str, str, int]] = []
    for name in ("watched", "unwatched", "online", "offline"):
        setattr(
            h.hooks,
            name,
            lambda camera, name=name: calls.append((name, camera.id, len(camera.subscribers))),
        )
    first = h.subscribe("a", "one", 4)
    second = h.subscribe("a", "two", 4)
    assert calls == [("watched", "a", 1), ("watched", "a", 2)]
    calls.clear()
    for seq in range(3):  # online once, not per frame
        h.publish(frame("a", seq=seq, received_at=100.0 + seq))
    assert calls == [("online", "a", 2)]
    calls.clear()
    h.unsubscribe(first)
    h.unsubscribe(first)  # a second time changes nothing and says nothing
    h.unsubscribe(second)
    assert calls == [("unwatched", "a", 1), ("unwatched", "a", 0)]
    calls.clear()
    h.mark_offline(102.0 + OFFLINE_AFTER / 2)
    assert calls == []
    h.mark_offline(102.0 + OFFLINE_AFTER)
    h.mark_offline(103.0 + OFFLINE_AFTER)  # still offline: no second call; b never came online
    assert calls == [("offline", "a", 0)]
    calls.clear()
    h.publish(frame("a", seq=5, received_at=200.0))
    assert calls == [("online", "a", 0)]


def test_default_hooks_do_nothing() -> None:
    h = hub("a")
    subscriber = h.subscribe("a", "client", 4)
    h.publish(frame())
    h.unsubscribe(subscriber)
    assert h.mark_offline(1000.0)[0].id == "a"


def test_unconfigured_cameras_are_bounded() -> None:
    hub = Hub(
        [CameraInfo("a", "A", 640, 480)],
        offline_after=OFFLINE_AFTER,
        accept_unknown=True,
        max_cameras=3,
    )
    assert [hub.publish(frame(name)).value for name in "xyz"] == [
        "live",
        "live",
        "too_many_cameras",
    ]
    assert sorted(hub.cameras) == ["a", "x", "y"]
    assert hub.full and hub.errors["too_many_cameras"] == 1


def test_a_viewer_of_a_4k_raw_camera_queues_one_frame() -> None:
    """25 MB a frame: the newest only, whatever server.queue_depth; its browser outputs
    (small JPEGs) and other cameras keep the depth asked for."""
    hub = Hub(
        [
            CameraInfo("big", "big", 3840, 2160, "lz4"),
            CameraInfo("small", "small", 640, 480, "lz4"),
        ],
        offline_after=3.0,
    )
    assert hub.subscribe("big", "c1", 2).queue.depth == 1
    assert hub.subscribe("big", "c2", 2, browser=True).queue.depth == 2
    assert hub.subscribe("small", "c3", 2).queue.depth == 2
