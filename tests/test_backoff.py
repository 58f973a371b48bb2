"""broker.support.backoff: doubling delays up to a cap, and the jitter the client uses."""

from __future__ import annotations

import pytest

from broker.support.backoff import Backoff


def test_delays_double_up_to_the_limit_and_reset() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_jitter_draws_between_a_fraction_of_the_delay_and_the_delay() -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        drawn.append((lo, hi))
        return hi

    backoff = Backoff(0.5, 10.0, jitter=0.5, uniform=uniform)
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert drawn == [(0.25, 0.5), (0.5, 1.0), (1.0, 2.0)]
    real = Backoff(4.0, 4.0, jitter=0.5)
    assert all(2.0 <= real.next() <= 4.0 for _ in range(100))
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
