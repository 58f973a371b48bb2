"""Broker events: what happened to which camera, as every listener and ``/ws`` client
gets it (docs/protocol.md, "Events"). Pure.

As JSON::

    {"type": "event", "event": "settings_changed", "camera": "lobby",
     "timestamp": 1763700000.5, "data": {"settings": {...}, "changed": ["brightness"]}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Every event, and the fields of its ``data``.
EVENTS: dict[str, tuple[str, ...]] = {
    "camera_online": ("width", "height", "format"),
    "camera_offline": (),
    "settings_changed": ("settings", "changed"),
    "worker_connected": ("pid", "device", "streaming"),
    "worker_restarted": ("previous_pid", "pid", "device", "streaming"),
    "worker_lost": ("reason", "pid", "message"),
    "stream_started": (),
    "stream_stopped": (),
    # Analytics (camera "" for the analyzer's own events).
    "motion_started": ("time", "area", "seq"),
    "motion_stopped": ("time", "area", "seq"),
    "objects_detected": (
        "seq",
        "captured_at",
        "width",
        "height",
        "model",
        "label",
        "confidence",
        "box",
        "objects",
    ),
    "analyzer_started": ("pid", "previous_pid"),
    "analyzer_exited": ("pid", "reason"),
}


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # one of EVENTS
    camera: str
    timestamp: float  # Unix seconds
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "event",
            "event": self.event,
            "camera": self.camera,
            "timestamp": self.timestamp,
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> Event:
        """Lenient: an event as a client receives it."""
        data = message.get("data")
        timestamp = message.get("timestamp")
        return cls(
            event=str(message.get("event", "")),
            camera=str(message.get("camera") or ""),
            timestamp=float(timestamp) if isinstance(timestamp, int | float) else 0.0,
            data=dict(data) if isinstance(data, Mapping) else {},
        )
