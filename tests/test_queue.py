"""DropOldestQueue (broker/queue.py): bounded, FIFO, and counting what it drops."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.queue import DropOldestQueue


@pytest.mark.parametrize("depth", [0, -1, -100])
def test_depth_must_be_positive(depth: int) -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        DropOldestQueue(depth)


@pytest.mark.parametrize("depth", [1, 2, 64])
def test_depth(depth: int) -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(depth)
    assert queue.depth == depth
    assert len(queue) == 0
    assert queue.dropped == 0
    assert queue.put_count == 0


def test_fifo_order() -> None:
    queue: DropOldestQueue[str] = DropOldestQueue(4)
    for item in "abc":
        assert queue.put(item) is False
    assert len(queue) == 3
    assert [queue.get(), queue.get(), queue.get()] == ["a", "b", "c"]
    assert queue.get() is None
    assert queue.dropped == 0


def test_full_queue_drops_the_oldest() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    results = [queue.put(item) for item in range(5)]
    assert results == [False, False, False, True, True]
    assert len(queue) == 3
    assert queue.dropped == 2
    assert queue.put_count == 5
    assert [queue.get(), queue.get(), queue.get()] == [2, 3, 4]


def test_depth_one_keeps_only_the_latest() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(1)
    for item in range(10):
        queue.put(item)
    assert queue.dropped == 9
    assert queue.get() == 9
    assert queue.get() is None


def test_get_newest_drops_and_counts_older_items() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(8)
    for item in range(5):
        queue.put(item)
    assert queue.get_newest() == 4
    assert queue.dropped == 4
    assert len(queue) == 0
    assert queue.get_newest() is None
    assert queue.dropped == 4


def test_get_newest_after_overflow_counts_both_kinds_of_drop() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(2)
    for item in range(5):
        queue.put(item)
    assert queue.get_newest() == 4
    assert queue.dropped == 3 + 1


def test_get_newest_of_one_item_drops_nothing() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(2)
    queue.put(7)
    assert queue.get_newest() == 7
    assert queue.dropped == 0


def test_clear() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    for item in range(3):
        queue.put(item)
    queue.clear()
    assert len(queue) == 0
    assert queue.get() is None
    assert queue.dropped == 0  # cleared items are freed, not counted as dropped
    assert queue.put(9) is False
    assert queue.get() == 9


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers()),
        st.just(("get", None)),
        st.just(("newest", None)),
        st.just(("clear", None)),
    ),
    max_size=40,
)


@given(depth=st.integers(1, 5), ops=operations)
def test_matches_a_model(depth: int, ops: list[tuple[str, int | None]]) -> None:
    """Any sequence of operations agrees with a plain list model."""
    queue: DropOldestQueue[int] = DropOldestQueue(depth)
    model: deque[int] = deque()
    dropped = puts = 0
    for op, value in ops:
        if op == "put":
            assert value is not None  # puts carry an integer
            full = len(model) == depth
            if full:
                model.popleft()
                dropped += 1
            model.append(value)
            puts += 1
            assert queue.put(value) is full
        elif op == "get":
            assert queue.get() == (model.popleft() if model else None)
        elif op == "newest":
            expected = model.pop() if model else None
            dropped += len(model)
            model.clear()
            assert queue.get_newest() == expected
        else:
            model.clear()
            queue.clear()
        assert len(queue) == len(model) <= depth
        assert queue.dropped == dropped
        assert queue.put_count == puts
