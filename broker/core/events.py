"""Broker events (camera_online, settings_changed, worker_lost, ...) fanned out to listeners.

Like frames, events go to each listener through its own bounded drop-oldest queue: a
listener that stops reading loses its oldest events, and never holds up the publisher
or grows memory. ``publish`` is synchronous and never awaits, so the hub and the control
channel may call it from anywhere.

Listeners receive `broker.protocol.events.Event` values; ``/ws`` sends their JSON. How
a consumer waits for the next one is its own business (`broker.serve.delivery.next_event`):
it installs the listener's ``wake``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from broker.core.queue import DropOldestQueue
from broker.protocol.events import Event

LISTENER_DEPTH = 64


class ListenerClosed(Exception):
    """`EventBus.unlisten` was called: this listener gets nothing more."""


def _nobody_waits() -> None:
    pass


class Listener:
    """One consumer's view of the bus: its own queue, and ``wake``, called when an event
    is queued or the listener closed (installed by whoever waits)."""

    __slots__ = ("closed", "queue", "wake")

    def __init__(self, depth: int = LISTENER_DEPTH) -> None:
        self.queue: DropOldestQueue[Event] = DropOldestQueue(depth)
        self.closed = False
        self.wake: Callable[[], None] = _nobody_waits

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def offer(self, event: Event) -> None:
        self.queue.put(event)
        self.wake()

    def get_nowait(self) -> Event | None:
        """The oldest queued event, or None."""
        return self.queue.get()

    def close(self) -> None:
        self.closed = True
        self.queue.clear()
        self.wake()


class EventBus:
    def __init__(self, depth: int = LISTENER_DEPTH, clock: Callable[[], float] = time.time) -> None:
        self.depth = depth
        self.clock = clock
        self.listeners: set[Listener] = set()
        self.published = 0

    def listen(self) -> Listener:
        listener = Listener(self.depth)
        self.listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        listener.close()

    def publish(self, event: str, camera: str, **data: Any) -> Event:
        """Offer the event to every listener; returns it. Never blocks."""
        message = Event(event, camera, self.clock(), data)
        self.published += 1
        for listener in self.listeners:
            listener.offer(message)
        return message
