"""The analyzer <-> broker messages (docs/protocol.md, "Analytics").

The analyzer (``camera-analyzer``) receives frames from the broker's frame feed (a PUB
socket, the ingest message of `broker.protocol.wire`) and talks to the broker over one
DEALER connected to the broker's analytics ROUTER. Every message is one msgpack map
with ``version`` and ``type``:

analyzer -> broker
- ``hello``: ``pid``. Sent at start; the broker answers with ``config``.
- ``status``: ``analysed`` (camera -> frames analysed since start), ``lag`` (camera ->
  seconds from capture to the end of its last analysis), ``skipped`` (camera -> frames
  not analysed: newest wins). Sent every second: also the analyzer's heartbeat.
- ``motion``: ``camera``, ``active`` (bool), ``area`` (fraction of the frame moving,
  0..1), ``seq`` and ``captured_at`` of the frame that decided it.
- ``objects``: ``camera``, ``seq``, ``captured_at``, ``width``, ``height`` (of the
  frame), ``model``, ``objects``: a list of at most `MAX_OBJECTS` maps ``label``,
  ``confidence`` (0..1), ``box`` ([x, y, w, h] in frame pixels).

broker -> analyzer
- ``config``: ``cameras``: camera -> {``model``, ``confidence``}: the cameras to
  analyse now (any other is not). Sent on hello, on every change and every second (the
  broker's heartbeat: an analyzer that hears nothing exits).

Pure and synchronous. `decode` never trusts its input: it raises `AnalysisError`.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from broker.protocol.wire import CAMERA_ID, MAX_DIMENSION, Buffer

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_OBJECTS = 32
MAX_LABEL = 64
MODELS = ("motion", "face", "person", "onnx")
KINDS = ("hello", "status", "motion", "objects", "config")


class AnalysisError(ValueError):
    """A message that does not follow this protocol; the text says what is wrong."""


def encode(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"version": VERSION, "type": kind, **fields})


def decode(raw: Buffer) -> dict[str, Any]:
    """One checked message (see the module's docstring), or `AnalysisError`."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise AnalysisError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise AnalysisError(f"not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise AnalysisError("must be a msgpack map")
    if message.get("version") != VERSION:
        raise AnalysisError(f"unsupported version {message.get('version')!r:.20}")
    kind = message.get("type")
    if kind not in KINDS:
        raise AnalysisError(f"unknown type {kind!r:.30}")
    _CHECKS[kind](message)
    return message


def _need(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(name)
    if isinstance(value, bool) and kind is not bool:
        raise AnalysisError(f"{name} must be {_kind(kind)}")
    if kind is float and isinstance(value, int):
        value = message[name] = float(value)
    if not isinstance(value, kind):
        raise AnalysisError(f"{name} must be {_kind(kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AnalysisError(f"{name} must be finite")
    return value


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _camera(message: dict[str, Any]) -> None:
    camera = _need(message, "camera", str)
    if not CAMERA_ID.fullmatch(camera):
        raise AnalysisError("camera is not a valid camera id")


def _frame(message: dict[str, Any]) -> None:
    _camera(message)
    if _need(message, "seq", int) < 0:
        raise AnalysisError("seq must be >= 0")
    if _need(message, "captured_at", float) < 0:
        raise AnalysisError("captured_at must be >= 0")


def _per_camera(message: dict[str, Any], name: str, kind: type) -> None:
    table = message.get(name, {})
    if not isinstance(table, dict) or len(table) > 100_000:
        raise AnalysisError(f"{name} must be a map of cameras")
    for camera, value in table.items():
        if not isinstance(camera, str) or not CAMERA_ID.fullmatch(camera):
            raise AnalysisError(f"{name}: not a camera id")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AnalysisError(f"{name}: values must be numbers")
        if kind is int and not isinstance(value, int):
            raise AnalysisError(f"{name}: values must be integers")
        if not math.isfinite(value) or value < 0:
            raise AnalysisError(f"{name}: values must be finite and >= 0")
    message[name] = table


def _hello(message: dict[str, Any]) -> None:
    _need(message, "pid", int)


def _status(message: dict[str, Any]) -> None:
    _per_camera(message, "analysed", int)
    _per_camera(message, "lag", float)
    _per_camera(message, "skipped", int)


def _motion(message: dict[str, Any]) -> None:
    _frame(message)
    _need(message, "active", bool)
    area = _need(message, "area", float)
    if not 0 <= area <= 1:
        raise AnalysisError("area must be from 0 to 1")


def _objects(message: dict[str, Any]) -> None:
    _frame(message)
    for name in ("width", "height"):
        if not 1 <= _need(message, name, int) <= MAX_DIMENSION:
            raise AnalysisError(f"{name} must be from 1 to {MAX_DIMENSION}")
    if _need(message, "model", str) not in MODELS:
        raise AnalysisError(f"model must be one of {', '.join(MODELS)}")
    objects = _need(message, "objects", list)
    if len(objects) > MAX_OBJECTS:
        raise AnalysisError(f"more than {MAX_OBJECTS} objects")
    for item in objects:
        if not isinstance(item, dict):
            raise AnalysisError("objects must be maps")
        label = _need(item, "label", str)
        if not 0 < len(label) <= MAX_LABEL:
            raise AnalysisError(f"label must be 1 to {MAX_LABEL} characters")
        if not 0 <= _need(item, "confidence", float) <= 1:
            raise AnalysisError("confidence must be from 0 to 1")
        box = _need(item, "box", list)
        if len(box) != 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_DIMENSION for v in box
        ):
            raise AnalysisError("box must be [x, y, w, h] of integers from 0")


def _config(message: dict[str, Any]) -> None:
    cameras = _need(message, "cameras", dict)
    for camera, wanted in cameras.items():
        if not isinstance(camera, str) or not CAMERA_ID.fullmatch(camera):
            raise AnalysisError("config: not a camera id")
        if not isinstance(wanted, dict) or wanted.get("model") not in MODELS:
            raise AnalysisError(f"config: camera {camera}: model must be one of {MODELS}")
        confidence = _need(wanted, "confidence", float)
        if not 0 <= confidence <= 1:
            raise AnalysisError(f"config: camera {camera}: confidence must be from 0 to 1")


_CHECKS = {
    "hello": _hello,
    "status": _status,
    "motion": _motion,
    "objects": _objects,
    "config": _config,
}
