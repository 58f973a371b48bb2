"""The event bus (broker/core/events.py): per-listener drop-oldest queues, never blocking;
waiting for a listener's next event (broker/serve/delivery.py)."""

from __future__ import annotations

import pytest
import trio

from broker.core.events import EventBus, ListenerClosed
from broker.serve.delivery import next_event


def test_publish_reaches_every_listener_as_one_shared_event() -> None:
    bus = EventBus(clock=lambda: 1234.5)
    first, second = bus.listen(), bus.listen()
    event = bus.publish(
        "settings_changed", "lobby", settings={"brightness": 60}, changed=["brightness"]
    )
    assert event.to_json() == {
        "type": "event",
        "event": "settings_changed",
        "camera": "lobby",
        "timestamp": 1234.5,
        "data": {"settings": {"brightness": 60}, "changed": ["brightness"]},
    }
    assert first.get_nowait() is event
    assert second.get_nowait() is event
    assert first.get_nowait() is None
    assert bus.published == 1


def test_publish_with_no_listener_is_fine_and_events_are_not_kept() -> None:
    bus = EventBus()
    bus.publish("camera_online", "a")
    listener = bus.listen()
    assert listener.get_nowait() is None  # a listener sees what happens after it joined


def test_a_slow_listener_drops_its_oldest_events_only() -> None:
    bus = EventBus(depth=64)
    slow, fast = bus.listen(), bus.listen()
    seen = []
    for i in range(100):
        bus.publish("camera_online", f"cam{i}")
        event = fast.get_nowait()
        assert event is not None
        seen.append(event)
    assert [e.camera for e in seen] == [f"cam{i}" for i in range(100)]
    assert fast.dropped == 0
    assert len(slow.queue) == 64
    assert slow.dropped == 36
    oldest = slow.get_nowait()
    assert oldest is not None and oldest.camera == "cam36"  # the oldest that survived


def test_unlisten_stops_delivery_and_frees_the_queue() -> None:
    bus = EventBus()
    listener = bus.listen()
    bus.publish("camera_online", "a")
    bus.unlisten(listener)
    bus.publish("camera_online", "b")
    assert listener.get_nowait() is None
    assert listener not in bus.listeners
    bus.unlisten(listener)  # twice is harmless


@pytest.mark.timeout(10)
async def test_next_waits_for_an_event_and_wakes_at_once() -> None:
    bus = EventBus()
    listener = bus.listen()
    got = []

    async def consume() -> None:
        got.append(await next_event(listener))
        got.append(await next_event(listener))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(0.05)
            assert got == []
            bus.publish("worker_lost", "a", reason="silent")
            await trio.sleep(0.05)
            assert [e.event for e in got] == ["worker_lost"]
            bus.publish("worker_connected", "a")
    assert [e.event for e in got] == ["worker_lost", "worker_connected"]


@pytest.mark.timeout(10)
async def test_next_returns_queued_events_in_order_without_waiting() -> None:
    bus = EventBus()
    listener = bus.listen()
    for name in ("camera_online", "stream_started", "camera_offline"):
        bus.publish(name, "a")
    with trio.fail_after(1):
        assert [(await next_event(listener)).event for _ in range(3)] == [
            "camera_online",
            "stream_started",
            "camera_offline",
        ]


@pytest.mark.timeout(10)
async def test_unlisten_wakes_a_waiting_next_with_listener_closed() -> None:
    bus = EventBus()
    listener = bus.listen()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                with pytest.raises(ListenerClosed):
                    await next_event(listener)

            nursery.start_soon(wait)
            await trio.sleep(0.05)
            bus.unlisten(listener)
