"""What the client raises: the broker's refusals and the client's own failures, all
`BrokerError` with a machine ``code``."""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]  # a JSON message from or to the broker


class BrokerError(Exception):
    """The broker refused a request (an ``error`` message), or the client could not
    complete one. ``code`` is the broker's machine code, or the client's own."""

    def __init__(
        self,
        message: str,
        code: str = "error",
        request_id: str | None = None,
        reply: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.reply = reply

    @classmethod
    def from_reply(cls, reply: Message) -> BrokerError:
        rid = reply.get("request_id")
        return cls(
            str(reply.get("message", "")),
            str(reply.get("code", "error")),
            None if rid is None else str(rid),
            reply,
        )

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectError(BrokerError):
    """No connection could be made (refused, unreachable, no handshake, refused token)."""


class AuthError(ConnectError):
    """The broker refused the token at the handshake (HTTP 401 or 403); never retried."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, "unauthorized" if status == 401 else "forbidden")
        self.status = status


class ConnectionLost(BrokerError):
    """The connection ended before the answer came, or there is no connection now."""

    def __init__(self, message: str = "the connection to the broker was lost") -> None:
        super().__init__(message, "connection_lost")


class RequestTimeout(BrokerError, TimeoutError):
    """No answer within the request timeout."""
