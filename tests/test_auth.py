"""Tokens, grants and command rate limits (broker/auth.py): pure, no event loop."""

from __future__ import annotations

import hashlib

import pytest

from broker.config import TokenConfig
from broker.serve.access import OPEN, Access, Grant, request_token
from broker.support.ratelimit import RateLimiter, TokenBucket

TOKENS = [
    TokenConfig("viewer-token-1", "viewer", (), "wall"),
    TokenConfig("operator-token", "operator", (), "ops"),
    TokenConfig("lobby-only-op", "operator", ("lobby",), ""),
    TokenConfig("lobby-only-viewer", "viewer", ("lobby", "door"), ""),
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_tokens_means_open_access_for_everyone() -> None:
    access = Access([])
    assert access.open
    for token in (None, "", "anything"):
        grant = access.check(token)
        assert grant is OPEN
        assert grant.can_watch("any") and grant.can_control("any")


def test_missing_or_wrong_tokens_get_no_grant() -> None:
    access = Access(TOKENS)
    assert not access.open
    for token in (None, "", "viewer-token", "viewer-token-12", "VIEWER-TOKEN-1", "x" * 1000):
        assert access.check(token) is None, token


def test_roles_and_camera_lists() -> None:
    access = Access(TOKENS)
    viewer = access.check("viewer-token-1")
    assert viewer == Grant("viewer", None, "wall")
    assert viewer.can_watch("lobby") and viewer.can_watch("anything")
    assert not viewer.can_control("lobby") and not viewer.operator

    operator = access.check("operator-token")
    assert operator is not None and operator.operator
    assert operator.can_watch("lobby") and operator.can_control("door")

    limited = access.check("lobby-only-op")
    assert limited is not None and limited.cameras == frozenset({"lobby"})
    assert limited.can_control("lobby")
    assert not limited.can_watch("door") and not limited.can_control("door")
    # Never the token, nor a part of it, in a log line: a short hash of it.
    assert limited.name == "token " + hashlib.sha256(b"lobby-only-op").hexdigest()[:8]

    limited_viewer = access.check("lobby-only-viewer")
    assert limited_viewer is not None
    assert limited_viewer.can_watch("door") and not limited_viewer.can_watch("yard")
    assert not limited_viewer.can_control("door")


@pytest.mark.parametrize(
    ("authorization", "query", "token"),
    [
        ("Bearer abc123456", None, "abc123456"),
        ("bearer   abc123456  ", None, "abc123456"),
        ("BEARER abc123456", "other", "abc123456"),  # the header wins
        ("", "from-query", "from-query"),
        ("Basic dXNlcjpwdw==", "from-query", "from-query"),  # not ours: fall back
        ("Basic dXNlcjpwdw==", None, None),
        ("Bearer", None, None),
        ("Bearer   ", "", None),
        ("", None, None),
    ],
)
def test_request_token(authorization: str, query: str | None, token: str | None) -> None:
    assert request_token(authorization, query) == token


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    assert all(bucket.take(0.0) for _ in range(10))
    assert not bucket.take(0.0)  # refused, not queued
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert all(bucket.take(10.0) for _ in range(10))  # refilled, but never past the burst
    assert not bucket.take(10.0)


def test_token_bucket_tolerates_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert bucket.take(6.0)


def test_rate_limiter_counts_each_client_separately() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock=clock)
    assert limiter.burst == 10
    results = [limiter.allow("a") for _ in range(11)]
    assert results == [True] * 10 + [False]
    assert limiter.allow("b")  # another client has its own bucket
    assert limiter.refused == 1
    clock.now += 0.125  # 1.25 tokens (0.1 would be 0.99999... in floating point)
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 1.0
    assert sum(limiter.allow("a") for _ in range(20)) == 10


def test_rate_limiter_slow_rates_still_allow_one_command() -> None:
    clock = Clock()
    limiter = RateLimiter(0.5, clock=clock)  # burst max(1, 0.5)
    assert limiter.allow() and not limiter.allow()
    clock.now += 2.0
    assert limiter.allow()


def test_rate_limiter_forgets_the_least_recently_used_beyond_its_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(1, clock=clock, max_clients=3)
    for key in ("a", "b", "c"):
        assert limiter.allow(key)
    assert not limiter.allow("a")  # a is now the most recently used
    assert limiter.allow("d")  # evicts b, the least recently used
    assert len(limiter) == 3
    assert not limiter.allow("a") and not limiter.allow("c") and not limiter.allow("d")
    assert limiter.allow("b")  # forgotten, so it starts afresh
    assert len(limiter) == 3


def test_rate_limiter_rejects_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0)


def test_rate_limiter_says_how_long_to_wait_without_spending() -> None:
    """The failed-token throttle: a burst of failures, then one per 1/rate seconds."""
    clock = Clock()
    failures = RateLimiter(0.2, 3, clock=clock)
    assert failures.wait("10.0.0.1") == 0.0  # unknown: no bucket made
    assert len(failures) == 0
    for _ in range(3):
        assert failures.wait("10.0.0.1") == 0.0
        failures.allow("10.0.0.1")
    assert failures.wait("10.0.0.1") == pytest.approx(5.0)
    assert failures.wait("10.0.0.1") == pytest.approx(5.0)  # asking spends nothing
    clock.now += 3.0
    assert failures.wait("10.0.0.1") == pytest.approx(2.0)
    clock.now += 2.0
    assert failures.wait("10.0.0.1") == 0.0
    assert failures.wait("10.0.0.2") == 0.0  # per address
