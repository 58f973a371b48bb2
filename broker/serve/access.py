"""Who may do what: bearer tokens from the config, and per-client command rate limits.

Pure and synchronous. The server asks `Access.check` for the `Grant` of a request's
token (``Authorization: Bearer T``, else ``?token=T`` for browsers and Grafana, which
cannot set headers on a WebSocket) and the grant answers `can_watch` / `can_control`.
With no ``[[tokens]]`` in the config every client gets `OPEN`: the demo needs no setup.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from broker.config import TokenConfig

OPERATOR = "operator"
VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: str  # "viewer": watch, list, stats; "operator": also commands and settings
    cameras: frozenset[str] | None = None  # the cameras it may see; None = all
    name: str = ""  # for the log; never the token itself

    def can_watch(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def can_control(self, camera: str) -> bool:
        return self.role == OPERATOR and self.can_watch(camera)

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


OPEN = Grant(OPERATOR, None, "anyone")  # no tokens configured


class Access:
    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._grants = [
            (t.token.encode(), Grant(t.role, frozenset(t.cameras) or None, t.label)) for t in tokens
        ]

    @property
    def open(self) -> bool:
        """True when no tokens are configured: everyone may do everything."""
        return not self._grants

    def check(self, token: str | None) -> Grant | None:
        """The grant of ``token``; None when it is missing or unknown (answer 401)."""
        if self.open:
            return OPEN
        if not token:
            return None
        given = token.encode()
        found = None
        for known, grant in self._grants:  # compare with every token, in constant time
            if hmac.compare_digest(known, given):
                found = grant
        return found


def request_token(authorization: str, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer T``, else the ``token`` query
    parameter, else None."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query_token or None


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
