"""Requests: each gets a ``request_id``, waits at most the request timeout for the
answer carrying it, and fails with `ConnectionLost` if the connection ends first."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from broker.client.errors import BrokerError, ConnectionLost, Message, RequestTimeout


@dataclass(slots=True)
class _Pending:
    """A request waiting for its answer."""

    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None
    error: BrokerError | None = None

    def resolve(self, reply: Message) -> None:
        self.reply = reply
        self.done.set()

    def fail(self, error: BrokerError) -> None:
        self.error = error
        self.done.set()


class Requests:
    """The requests in flight, matched to their answers by ``request_id``."""

    def __init__(self, send: Callable[[str], Awaitable[None]], timeout: float) -> None:
        self.timeout = timeout
        self._send = send  # raises ConnectionLost when there is no connection
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}

    async def request(self, kind: str, **fields: Any) -> Message:
        """Send one request and wait, at most ``timeout``, for its answer; an ``error``
        answer raises `BrokerError`."""
        request_id = f"r{next(self._ids)}"
        pending = self._pending[request_id] = _Pending()
        try:
            message = json.dumps({"type": kind, **fields, "request_id": request_id})
            with trio.move_on_after(self.timeout):
                await self._send(message)
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            raise RequestTimeout(
                f"no answer to {kind} within {self.timeout:g} s", "timeout", request_id
            )
        if pending.reply.get("type") == "error":
            raise BrokerError.from_reply(pending.reply)
        return pending.reply

    def answer(self, message: Message) -> bool:
        """Hand ``message`` to the request it answers; False if it answers none."""
        rid = message.get("request_id")
        pending = self._pending.get(str(rid)) if rid is not None else None
        if pending is None:
            return False
        pending.resolve(message)
        return True

    def fail_all(self) -> None:
        """The connection ended: every request in flight fails with `ConnectionLost`."""
        for pending in self._pending.values():
            pending.fail(ConnectionLost())
