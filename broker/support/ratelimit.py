"""Rate limits: a token bucket per client key (a connection, a token, an address), with
a bounded number of keys. Pure and synchronous; the clock is injectable."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class TokenBucket:
    """``rate`` per second on average, at most ``burst`` at once."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means: refuse, do not queue."""
        self._refill(now)
        if self.tokens >= 1 - 1e-9:  # a client pacing exactly at the rate is not refused
            self.tokens = max(0.0, self.tokens - 1)
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is there to take (0: now); spends nothing."""
        self._refill(now)
        return max(0.0, (1 - 1e-9 - self.tokens) / self.rate)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now


class RateLimiter:
    """One token bucket per client key (a connection, a token, an address).

    At most ``max_clients`` buckets are kept; beyond that the least recently used is
    forgotten, so a flood of new addresses cannot grow memory.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 4096,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be above 0, got {rate}")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self.refused = 0

    def allow(self, key: Hashable = None) -> bool:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return True
        self.refused += 1
        return False

    def wait(self, key: Hashable = None) -> float:
        """Seconds until `allow` would say yes for ``key`` (0: now); spends nothing."""
        bucket = self._buckets.get(key)
        return bucket.wait(self.clock()) if bucket is not None else 0.0

    def __len__(self) -> int:
        return len(self._buckets)
