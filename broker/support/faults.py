"""Error boundaries: nothing one peer sends, and no bug one request trips, ends the broker.

Every connection, upload, ZeroMQ message, control message and background job runs
inside a boundary. An unexpected exception there is logged once with its traceback
(rate-limited per place), counted by the place it happened (``/healthz`` ``faults``,
``camera_broker_faults_total{where}``), and the rest of the broker carries on: a
connection is answered (500, ``internal_error`` on ``/ws``, close 1011) or dropped, a
message dropped, a background job restarted after a backoff.

Only exceptions are contained: ``trio.Cancelled`` and other ``BaseException`` pass, so
shutdown stays orderly. What is still fatal on purpose is listed in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from broker.support.backoff import Backoff
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.faults")

# A job that ran this long before failing was healthy: its next restart waits the least.
HEALTHY_RUN = 60.0


class Faults:
    """Unexpected exceptions contained at the broker's boundaries, counted by place."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = Counter()
        self._log = LogThrottle(logger)

    def record(self, where: str, exc: BaseException, context: str = "") -> None:
        """Count ``exc`` under ``where`` and log it (with its traceback) unless a line for
        ``where`` went out within the last few seconds."""
        self.counts[where] += 1
        detail = f" ({context})" if context else ""
        self._log.error(
            where,
            "%s: unexpected %s%s; contained, carrying on",
            where,
            type(exc).__name__,
            detail,
            exc=exc,
        )

    @contextlib.contextmanager
    def contain(self, where: str, context: str = "") -> Iterator[None]:
        """Record any exception raised in the block instead of propagating it."""
        try:
            yield
        except Exception as exc:
            self.record(where, exc, context)

    async def keep_running(
        self,
        where: str,
        job: Callable[..., Awaitable[Any]],
        *args: Any,
        backoff: Backoff | None = None,
    ) -> None:
        """Run a background job until it returns; restart it after an unexpected
        exception, waiting longer after each failure that follows a short run."""
        backoff = backoff or Backoff(0.5, 30.0)
        while True:
            started = trio.current_time()
            try:
                await job(*args)
                return
            except Exception as exc:
                self.record(where, exc, "restarting the job")
            if trio.current_time() - started >= HEALTHY_RUN:
                backoff.reset()
            await trio.sleep(backoff.next())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
