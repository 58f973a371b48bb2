"""Handlers: functions called for each message of a type, or for each frame.

A sync handler runs inline; an async one runs as a task of its own in the client's
nursery, at most ``max_tasks`` at once (further calls are skipped and counted), so a
slow handler never holds up frames. A handler that raises is counted and logged, with
its traceback, at most once per message type every 5 s.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.client")

Handler = Callable[[Any], Any]  # sync, or returning an awaitable


class Handlers:
    """The handlers registered per message type, and the async ones still running."""

    def __init__(self, max_tasks: int, complaints: LogThrottle) -> None:
        self.max_tasks = max_tasks
        self.nursery: trio.Nursery | None = None  # where async handlers run; set by connect
        self.errors = 0  # handler calls that raised
        self.skipped = 0  # async handler calls not started: max_tasks were running
        self._by_kind: dict[str, list[Handler]] = {}
        self._any: list[Handler] = []
        self._running = 0
        self._complaints = complaints

    def add(self, kind: str, handler: Handler) -> None:
        self._by_kind.setdefault(kind, []).append(handler)

    def add_any(self, handler: Handler) -> None:
        self._any.append(handler)

    def remove(self, kind: str, handler: Handler) -> None:
        if handler in self._by_kind.get(kind, ()):
            self._by_kind[kind].remove(handler)

    def remove_any(self, handler: Handler) -> None:
        if handler in self._any:
            self._any.remove(handler)

    def dispatch(self, kind: str, payload: Any, generic: bool = False) -> None:
        """Call the handlers of ``kind`` (and, if ``generic``, those for any message)."""
        handlers = self._by_kind.get(kind, [])
        for handler in [*handlers, *self._any] if generic else list(handlers):
            try:
                result = handler(payload)
            except Exception as exc:
                self._failed(kind, handler, exc)
                continue
            if not inspect.isawaitable(result):
                continue
            if self._running >= self.max_tasks or self.nursery is None:
                self.skipped += 1
                if inspect.iscoroutine(result):
                    result.close()
                self._complaints.warning(
                    "handlers",
                    "%d async handlers still running: skipped a %s handler call",
                    self._running,
                    kind,
                )
                continue
            self._running += 1
            self.nursery.start_soon(self._await, kind, handler, result)

    async def _await(self, kind: str, handler: Handler, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._failed(kind, handler, exc)
        finally:
            self._running -= 1

    def _failed(self, kind: str, handler: Handler, exc: Exception) -> None:
        """Count it; log it with its traceback, at most once per kind every 5 s (a
        frame handler that always fails would otherwise flood the log)."""
        self.errors += 1
        trace = "".join(traceback.format_exception(exc)).rstrip()
        self._complaints.warning(
            "handler:" + kind, "%s handler %r failed:\n%s", kind, handler, trace
        )
