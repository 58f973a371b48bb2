"""A bounded queue that drops its oldest item when full.

Each client gets one per camera, so a slow client only ever loses frames it has not
seen yet: it never blocks the publisher and never grows memory.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Synchronous and loop-free; the owner decides how to wait for items."""

    __slots__ = ("_items", "dropped", "put_count")

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be >= 1, got {depth}")
        self._items: deque[T] = deque(maxlen=depth)
        self.dropped = 0  # items pushed out unseen
        self.put_count = 0

    @property
    def depth(self) -> int:
        return self._items.maxlen or 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Add ``item``; returns True when the oldest item was dropped to make room."""
        full = len(self._items) == self._items.maxlen
        self._items.append(item)  # deque(maxlen) discards from the left
        self.put_count += 1
        if full:
            self.dropped += 1
        return full

    def get(self) -> T | None:
        """The oldest item, or None when empty."""
        return self._items.popleft() if self._items else None

    def peek(self) -> T | None:
        """The oldest item, left in place; None when empty."""
        return self._items[0] if self._items else None

    def get_newest(self) -> T | None:
        """The newest item, dropping (and counting) everything older; None when empty."""
        if not self._items:
            return None
        newest = self._items.pop()
        self.dropped += len(self._items)
        self._items.clear()
        return newest

    def clear(self) -> None:
        self._items.clear()
