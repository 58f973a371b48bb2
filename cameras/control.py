"""The broker ↔ worker control protocol (see docs/protocol.md, "Control channel").

The broker binds a ZeroMQ ROUTER socket; each worker connects a DEALER whose routing
id is its camera id. Every message is one msgpack map with a ``type``:

worker → broker
  ``hello``      camera, device, supported, settings, streaming, pid: on connect, and
                 whenever the broker asks (``hello_request``)
  ``heartbeat``  streaming: every heartbeat interval
  ``reply``      the answer to one command: request_id, success, message, settings,
                 streaming, timestamp (seed 002's StatusResponse)
broker → worker
  ``heartbeat``      every heartbeat interval
  ``hello_request``  the broker does not know this worker (it restarted, say)
  ``command``        request_id, command (one of `COMMANDS`), settings

Pure and synchronous: decoding never trusts its input and raises `ControlError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

CONTROL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
COMMANDS = ("update_settings", "start_stream", "stop_stream", "get_status", "restart_camera")

# The fields each message type must carry, with their types.
# fmt: off
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"camera": str, "device": str, "supported": dict, "settings": dict,
              "streaming": bool, "pid": int},
    "heartbeat": {},
    "reply": {"request_id": str, "success": bool, "message": str, "settings": dict,
              "streaming": bool, "timestamp": (int, float)},
    "hello_request": {},
    "command": {"request_id": str, "command": str, "settings": dict},
}
# fmt: on


class ControlError(ValueError):
    """A control message that does not follow the protocol; the text says why."""


def encode(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"type": kind, "version": CONTROL_VERSION, **fields})


def decode(data: bytes | memoryview) -> dict[str, Any]:
    """The message as a dict with at least the fields of its type, or `ControlError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ControlError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ControlError(f"not msgpack: {exc}") from None
    if not isinstance(message, Mapping):
        raise ControlError(f"must be a msgpack map, got {type(message).__name__}")
    kind = message.get("type")
    if kind not in FIELDS:
        raise ControlError(f"unknown type {kind!r} (known: {', '.join(FIELDS)})")
    if message.get("version") != CONTROL_VERSION:
        raise ControlError(f"version {message.get('version')!r}, expected {CONTROL_VERSION}")
    for field, kinds in FIELDS[kind].items():
        value = message.get(field)
        if not isinstance(value, kinds) or (kinds is int and isinstance(value, bool)):
            raise ControlError(f"{kind}: field {field!r} is missing or of the wrong type")
    if kind == "command" and message["command"] not in COMMANDS:
        raise ControlError(f"unknown command {message['command']!r} (known: {', '.join(COMMANDS)})")
    return dict(message)
