"""Exponential backoff: the one used wherever something failing is retried (workers,
sources, background jobs, client reconnects). Pure but for the random draw of the
jitter, which is injectable."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Exponential delays: ``first``, doubled each time, at most ``limit``.

    With ``jitter`` (0..1) each delay is drawn between ``(1 - jitter)`` times it and
    itself, so many clients that lost the same server do not all retry at once.
    """

    def __init__(
        self,
        first: float = 1.0,
        limit: float = 30.0,
        jitter: float = 0.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be from 0 to 1, got {jitter}")
        self.first, self.limit, self.delay = first, limit, first
        self.jitter = jitter
        self._uniform = uniform

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.limit)
        if self.jitter:
            return self._uniform(delay * (1 - self.jitter), delay)
        return delay

    def reset(self) -> None:
        self.delay = self.first
