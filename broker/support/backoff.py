"""Exponential backoff: the one used wherever something failing is retried (workers,
sources, background jobs, client reconnects). Pure."""

from __future__ import annotations


class Backoff:
    """Exponential delays: ``first``, doubled each time, at most ``limit``."""

    def __init__(self, first: float = 1.0, limit: float = 30.0) -> None:
        self.first, self.limit, self.delay = first, limit, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.limit)
        return delay

    def reset(self) -> None:
        self.delay = self.first
