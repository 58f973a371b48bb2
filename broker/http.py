"""Small HTTP helpers over h11: responses, JSON bodies and request targets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import h11


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def parse_json(data: str | bytes) -> object:
    """Strict JSON: ValueError for anything else, ``NaN``/``Infinity`` and nesting too deep
    for the parser included (so nothing but JSON can be echoed back)."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def json_response(data: object, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json")


def error(status: int, code: str, message: str, **headers: str) -> Response:
    response = json_response({"error": code, "message": message}, status)
    response.headers.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return response


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    query: dict[str, list[str]]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def parse_target(raw: bytes) -> Target:
    parts = urlsplit(raw.decode("ascii", "replace"))
    return Target(unquote(parts.path) or "/", parse_qs(parts.query))


def header(request: h11.Request, name: bytes) -> str:
    """The value of header ``name`` (lower case), or "" when absent."""
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def h11_response(response: Response, *, head_only: bool = False) -> tuple[h11.Response, bytes]:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    return h11.Response(status_code=response.status, headers=headers, reason=reason), (
        b"" if head_only else response.body
    )
