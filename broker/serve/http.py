"""Small HTTP helpers over h11: responses, error answers and JSON bodies. Pure."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

from broker.protocol.results import ERRORS


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def parse_json(data: str | bytes) -> object:
    """Strict JSON: ValueError for anything else, ``NaN``/``Infinity``, numbers beyond a
    float's range (``1e400``) and nesting too deep for the parser included (so nothing
    but JSON can be echoed back)."""
    try:
        return json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def to_json(data: object) -> str:
    """JSON text, never ``NaN``/``Infinity`` (ValueError): what goes on the wire is JSON."""
    return json.dumps(data, allow_nan=False)


def json_response(data: object, status: int = 200) -> Response:
    return Response(status, to_json(data).encode(), "application/json")


def error(code: str, message: str, *, status: int | None = None, **headers: str) -> Response:
    """The JSON error answer ``{"error": code, "message": message}``, with the HTTP status
    of ``code`` in `broker.protocol.results.ERRORS` (KeyError for a code not in it), or
    ``status`` where one code covers several (a malformed request: 400 or 431)."""
    status = status if status is not None else ERRORS[code].status
    response = json_response({"error": code, "message": message}, status)
    response.headers.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return response


# What h11 quotes of the client's bytes in its messages ("illegal request line: b'GET
# /?token=...'"): cut off, since it may carry a token.
QUOTED_INPUT = re.compile(r""":?\s*(?:bytearray\()?b['"].*""", re.DOTALL)


def protocol_problem(exc: Exception) -> str:
    """What is wrong with a malformed request, in h11's words, without the client's bytes."""
    return QUOTED_INPUT.sub("", str(exc)).strip() or "malformed request"


def header(request: h11.Request, name: bytes) -> str:
    """The value of header ``name`` (lower case), or "" when absent."""
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return ""


# On every response: no content sniffing (an upload is never run as a script), and no
# Referer from our pages (their URLs may carry ?token=).
SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)


def h11_response(response: Response, *, head_only: bool = False) -> tuple[h11.Response, bytes]:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *SECURITY_HEADERS,
        *response.headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    return h11.Response(status_code=response.status, headers=headers, reason=reason), (
        b"" if head_only else response.body
    )
