"""The requests of the multiplexed WebSocket endpoint ``/ws``: JSON text messages, each
an object with a ``type`` and an optional ``request_id`` echoed in its answer. Parsing
and field checks, pure; a request that breaks them is answered with `RequestError`'s
code (docs/protocol.md, "Multiplexed WebSocket").
"""

from __future__ import annotations

import math
from typing import Any

from broker.serve.http import parse_json

MAX_REQUEST = 64 * 1024  # larger text messages are answered with error too_large


class RequestError(Exception):
    """A request we cannot serve: answered with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_request(message: str | bytes) -> dict[str, Any]:
    """The JSON object of one client message, or RequestError."""
    if not isinstance(message, str):
        raise RequestError(
            "binary_message",
            "requests are JSON text messages; the broker accepts no binary messages",
        )
    if len(message) > MAX_REQUEST or len(message.encode()) > MAX_REQUEST:
        raise RequestError("too_large", f"a request may be at most {MAX_REQUEST} bytes")
    try:
        request = parse_json(message)
    except ValueError as exc:
        raise RequestError("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError("invalid_message", "a request must be a JSON object with a 'type'")
    return request


def request_id_of(request: dict[str, Any]) -> Any:
    """The request's ``request_id`` (a string or a number), None when absent, else
    RequestError."""
    request_id = request.get("request_id")
    if request_id is None or isinstance(request_id, str):
        return request_id
    if is_number(request_id):
        return request_id
    raise RequestError("invalid_field", "field 'request_id' must be a string or a number")


def string_field(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        problem = "is missing" if value is None else "must be a non-empty string"
        raise RequestError("invalid_field", f"field {name!r} {problem}")
    return value


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def echoable(request_id: object) -> str | int | float | None:
    """``request_id`` if it can go back as JSON, else None."""
    if isinstance(request_id, str | int) and not isinstance(request_id, bool):
        return request_id
    if isinstance(request_id, float) and math.isfinite(request_id):
        return request_id
    return None
