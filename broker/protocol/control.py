"""The broker ↔ worker control protocol (see docs/protocol.md, "Control channel").

The broker binds a ZeroMQ ROUTER socket; each worker connects a DEALER whose routing
id is its camera id. Every message is one msgpack map with a ``type``:

worker → broker
  ``hello``      camera, device, supported, settings, streaming, pid: on connect, and
                 whenever the broker asks (``hello_request``)
  ``heartbeat``  streaming: every heartbeat interval
  ``reply``      the answer to one command: request_id, success, message, settings,
                 streaming, timestamp (docs/protocol.md)
broker → worker
  ``heartbeat``      every heartbeat interval
  ``hello_request``  the broker does not know this worker (it restarted, say)
  ``command``        request_id, command (one of `COMMANDS`), settings

Pure and synchronous: decoding never trusts its input. It checks every nested key and
value before anything uses them (no bytes or extension types anywhere, strings and
collections bounded, numbers finite; ``supported`` and ``settings`` by the settings
rules) and raises only `ControlError`, whose ``reason`` is a stable code for counting.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from broker.protocol import settings as camera_settings

CONTROL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_TEXT = 4096  # characters in any string
MAX_KEY = 128  # characters in any map key
MAX_ITEMS = 256  # entries in any map or list
MAX_DEPTH = 4  # maps and lists within the message map (hello: supported.width.choices)
MAX_REQUEST_ID = 128
MAX_PID = 2**32
COMMANDS = ("update_settings", "start_stream", "stop_stream", "get_status", "restart_camera")

# The fields each message type must carry, with their types.
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {
        "camera": str,
        "device": str,
        "supported": dict,
        "settings": dict,
        "streaming": bool,
        "pid": int,
    },
    "heartbeat": {},
    "reply": {
        "request_id": str,
        "success": bool,
        "message": str,
        "settings": dict,
        "streaming": bool,
        "timestamp": (int, float),
    },
    "hello_request": {},
    "command": {"request_id": str, "command": str, "settings": dict},
}
# Fields a message may carry; anything else is dropped once checked.
OPTIONAL: dict[str, dict[str, type]] = {
    "heartbeat": {"streaming": bool},
    "reply": {"errors": dict},
}
# Stable reasons of `ControlError`, as the broker counts them.
REASONS = (
    "oversize",
    "not_msgpack",
    "not_a_map",
    "bad_value",
    "unknown_type",
    "bad_version",
    "bad_field",
    "bad_supported",
    "bad_settings",
    "bad_errors",
)


class ControlError(ValueError):
    """A control message that does not follow the protocol. ``reason`` is one of
    `REASONS`; the text says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode(kind: str, **fields: Any) -> bytes:
    """One message; `ControlError` (``bad_value``) for what msgpack cannot carry, such as
    a string with a lone surrogate (validation should have refused it already)."""
    try:
        return msgpack.packb({"type": kind, "version": CONTROL_VERSION, **fields})
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError included
        raise ControlError("bad_value", f"{kind}: cannot encode: {exc}") from None


def decode(data: bytes | memoryview) -> dict[str, Any]:
    """The message as a dict of exactly the fields its type defines, each checked, or
    `ControlError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ControlError("oversize", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ControlError("not_msgpack", f"not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("not_a_map", f"must be a msgpack map, got {type(message).__name__}")
    _check_values(message, "", 0)
    kind = message.get("type")
    if kind not in FIELDS:
        shown = kind if isinstance(kind, str) and len(kind) <= 40 else type(kind).__name__
        raise ControlError("unknown_type", f"unknown type {shown!r} (known: {', '.join(FIELDS)})")
    if type(message.get("version")) is not int or message["version"] != CONTROL_VERSION:
        raise ControlError(
            "bad_version", f"version {message.get('version')!r}, expected {CONTROL_VERSION}"
        )
    checked: dict[str, Any] = {"type": kind, "version": CONTROL_VERSION}
    for field, kinds in FIELDS[kind].items():
        value = message.get(field)
        if not _is(value, kinds):
            raise ControlError(
                "bad_field", f"{kind}: field {field!r} is missing or of the wrong type"
            )
        checked[field] = value
    for field, optional in OPTIONAL.get(kind, {}).items():
        if field in message:
            if not _is(message[field], optional):
                raise ControlError("bad_field", f"{kind}: field {field!r} is of the wrong type")
            checked[field] = message[field]
    _CHECKS.get(kind, _nothing)(checked)
    return checked


def _is(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """isinstance, where a bool is not an int (nor a number)."""
    return isinstance(value, kinds) and (not isinstance(value, bool) or kinds is bool)


def _check_values(value: Any, path: str, depth: int) -> None:
    """Every nested key and value is JSON-able and bounded: str keys, no bytes or
    extension types, finite numbers, bounded strings, collections and nesting."""
    where = path or "the message"
    if value is None or isinstance(value, bool | int):
        return  # msgpack ints are 64-bit at most
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ControlError("bad_value", f"{where}: {value} is not a finite number")
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ControlError(
                "bad_value", f"{where}: a string of {len(value)} characters (at most {MAX_TEXT})"
            )
        return
    if not isinstance(value, dict | list):
        raise ControlError(
            "bad_value",
            f"{where}: {type(value).__name__} is not allowed "
            "(strings, numbers, booleans, null, maps and arrays only)",
        )
    if depth > MAX_DEPTH:
        raise ControlError("bad_value", f"{where}: nested deeper than {MAX_DEPTH} levels")
    if len(value) > MAX_ITEMS:
        raise ControlError("bad_value", f"{where}: {len(value)} entries (at most {MAX_ITEMS})")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, f"{path}[{index}]", depth + 1)
        return
    for key, item in value.items():
        if not isinstance(key, str):
            raise ControlError(
                "bad_value", f"{where}: a key of type {type(key).__name__} (keys must be strings)"
            )
        if len(key) > MAX_KEY:
            raise ControlError(
                "bad_value", f"{where}: a key of {len(key)} characters (at most {MAX_KEY})"
            )
        _check_values(item, f"{path}.{key}" if path else key, depth + 1)


def _check_request_id(message: dict[str, Any]) -> None:
    if not 0 < len(message["request_id"]) <= MAX_REQUEST_ID:
        raise ControlError(
            "bad_field", f"{message['type']}: request_id must be 1 to {MAX_REQUEST_ID} characters"
        )


def _check_reported(message: dict[str, Any]) -> None:
    """``settings`` as a worker reports them: known settings, each valid."""
    try:
        message["settings"] = camera_settings.check_reported(message["settings"])
    except camera_settings.SettingsError as bad:
        raise ControlError("bad_settings", f"{message['type']}: settings: {bad}") from None


def _check_hello(message: dict[str, Any]) -> None:
    if not 0 <= message["pid"] < MAX_PID:
        raise ControlError("bad_field", f"hello: pid {message['pid']} is out of range")
    try:
        message["supported"] = camera_settings.check_supported(message["supported"])
    except camera_settings.SettingsError as bad:
        raise ControlError("bad_supported", f"hello: supported: {bad}") from None
    _check_reported(message)


def _check_reply(message: dict[str, Any]) -> None:
    _check_request_id(message)
    _check_reported(message)
    errors = message.get("errors")
    if errors is not None and not all(isinstance(v, str) for v in errors.values()):
        raise ControlError("bad_errors", "reply: errors must map each key to a text")


def _check_command(message: dict[str, Any]) -> None:
    _check_request_id(message)
    if message["command"] not in COMMANDS:
        shown = message["command"][:40]
        raise ControlError("bad_field", f"unknown command {shown!r} (known: {', '.join(COMMANDS)})")
    # A request, not a report: the worker validates it against its own rules and names
    # each bad key in its reply. Here only its shape: setting names to plain values.
    for key, value in message["settings"].items():
        if isinstance(value, dict | list) or value is None:
            raise ControlError(
                "bad_settings", f"command: settings: {key}: must be a number, string or boolean"
            )


def _nothing(message: dict[str, Any]) -> None:
    pass


_CHECKS = {
    "hello": _check_hello,
    "reply": _check_reply,
    "command": _check_command,
}

# Seconds between heartbeats, both ways: the worker's --heartbeat and the broker's
# control.heartbeat_interval read this one range.
HEARTBEAT_RANGE = (0.1, 60.0)
