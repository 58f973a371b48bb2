"""Answers: the one table of error codes, and the one command result type.

Every error a client can get, over HTTP, on ``/ws`` or in a command's answer, has a
stable code listed in `ERRORS` with its HTTP status and what it means (docs/protocol.md
lists the same). A command's answer is a `CommandResult` (the StatusResponse of docs/protocol.md),
built by the broker and read back by the client library. Pure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int  # the HTTP status that carries it (on /ws: an ``error`` message)
    meaning: str


def _table(*rows: tuple[str, int, str]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(code, status, meaning) for code, status, meaning in rows}


# A command's failure (CommandResult.error).
COMMAND_ERRORS = _table(
    ("invalid_settings", 400, "a settings change breaks the rules; `errors` names each bad key"),
    ("unknown_command", 400, "no such command"),
    ("unknown_camera", 404, "no such camera"),
    ("unknown_preset", 404, "no such preset"),
    ("not_connected", 503, "the camera's worker is not connected to the control channel"),
    ("timeout", 504, "the worker did not answer within control.command_timeout"),
    ("worker_error", 502, "the worker refused or failed the command"),
    ("worker_lost", 502, "the worker exited or went silent while the command was pending"),
)

# Everything else a request can be refused with, over HTTP or on /ws.
REQUEST_ERRORS = _table(
    ("bad_request", 400, "a malformed HTTP request"),
    ("bad_handshake", 400, "a malformed WebSocket upgrade"),
    ("unsupported_version", 426, "a WebSocket version other than 13"),
    ("bad_fps", 400, "fps is not a number above 0 and at most 1000"),
    ("bad_query", 400, "a query parameter is out of range"),
    ("bad_form", 400, "a multipart upload that is not exactly one file"),
    ("invalid_json", 400, "the body or message is not strict JSON"),
    ("invalid_message", 400, "a /ws request that is not a JSON object with a type"),
    ("invalid_field", 400, "a /ws request field is missing or of the wrong type"),
    ("unknown_type", 400, "a /ws request of an unknown type"),
    ("binary_message", 400, "a binary /ws message (requests are text)"),
    ("not_subscribed", 400, "unsubscribe from a camera not subscribed to"),
    ("unauthorized", 401, "a token is required, or the one given is not valid"),
    ("forbidden", 403, "the token may not do this"),
    ("sessions_disabled", 403, "ingest.http_sessions is off"),
    ("not_found", 404, "nothing at this path"),
    ("no_camera", 404, "no camera is configured"),
    ("method_not_allowed", 405, "the method is not allowed on this path"),
    ("stale_frame", 409, "an upload older than the camera's newest frame"),
    ("too_large", 413, "the body or message exceeds its limit"),
    ("image_too_large", 413, "an upload over ingest.max_width x ingest.max_height"),
    ("unsupported_media_type", 415, "an upload of a type that is not an image we take"),
    ("not_an_image", 415, "an upload whose data is not the declared image"),
    ("upgrade_required", 426, "a WebSocket endpoint asked for with plain HTTP"),
    ("rate_limited", 429, "more requests or commands than the rate allows"),
    ("too_many_failed_tokens", 429, "this address presented too many wrong tokens"),
    ("internal_error", 500, "a bug met while serving this request (counted in faults)"),
    ("no_control", 503, "the broker has no control channel"),
    ("too_many_cameras", 503, "the broker holds ingest.max_cameras cameras already"),
)

ERRORS: dict[str, ErrorCode] = {**REQUEST_ERRORS, **COMMAND_ERRORS}


def http_status(code: str | None) -> int:
    """The HTTP status of error ``code`` (200 for no error, 500 for an unknown one)."""
    if code is None:
        return 200
    found = ERRORS.get(code)
    return found.status if found is not None else 500


@dataclass(slots=True)
class CommandResult:
    """The answer to a command (the StatusResponse of docs/protocol.md); ``to_json`` is what clients
    get, `from_json` reads it back. A camera-side failure is not an exception:
    ``success`` is False, ``error`` one of `COMMAND_ERRORS` and ``errors`` names each bad
    key of an invalid change."""

    success: bool
    message: str
    settings: dict[str, Any]  # the camera's current settings ({} if unknown)
    request_id: str
    timestamp: float  # Unix seconds
    camera: str = ""
    command: str = ""
    error: str | None = None
    errors: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, reply: Mapping[str, Any]) -> CommandResult:
        """Lenient: what a client receives, whatever a broker version added or left out."""
        rid = reply.get("request_id")
        timestamp = reply.get("timestamp")
        error = reply.get("error")
        errors = reply.get("errors")
        return cls(
            success=bool(reply.get("success")),
            message=str(reply.get("message", "")),
            settings=dict(reply.get("settings") or {}),
            request_id="" if rid is None else str(rid),
            timestamp=float(timestamp) if _is_finite(timestamp) else 0.0,
            camera=str(reply.get("camera", "")),
            command=str(reply.get("command", "")),
            error=error if isinstance(error, str) else None,
            errors={str(k): str(v) for k, v in errors.items()}
            if isinstance(errors, dict)
            else None,
        )


def _is_finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
