"""What the analyzer found, as the broker keeps it: motion state, recent detections (a
bounded ring per camera), counts, and the events to publish. Pure and synchronous; the
clock is passed in.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from broker.support.ratelimit import TokenBucket

# (event name, camera, its data) to publish.
Outgoing = tuple[str, str, dict[str, Any]]


class Results:
    def __init__(self, history: int, events_per_second: float) -> None:
        self.history = history
        self.events_per_second = events_per_second
        self.recent: dict[str, deque[dict[str, Any]]] = {}
        self.motion_active: dict[str, bool] = {}
        self.motion_events: Counter[str] = Counter()  # motion_started, by camera
        self.detections: Counter[tuple[str, str]] = Counter()  # (camera, label)
        self.analysed: Counter[str] = Counter()  # frames analysed, over analyzer restarts
        self.skipped: Counter[str] = Counter()  # frames not analysed (newest won)
        self.lag: dict[str, float] = {}  # seconds from capture to the end of analysis
        self.suppressed: Counter[str] = Counter()  # objects_detected events rate-limited
        self._reported: dict[str, tuple[int, int]] = {}  # the analyzer's last counts
        self._buckets: dict[str, TokenBucket] = {}

    def _remember(self, camera: str, record: dict[str, Any]) -> None:
        ring = self.recent.get(camera)
        if ring is None:
            ring = self.recent[camera] = deque(maxlen=self.history)
        ring.append(record)

    def motion(self, message: dict[str, Any], now: float) -> Outgoing | None:
        camera, active = message["camera"], message["active"]
        if self.motion_active.get(camera, False) == active:
            return None
        self.motion_active[camera] = active
        event = "motion_started" if active else "motion_stopped"
        if active:
            self.motion_events[camera] += 1
        data = {"time": message["captured_at"], "area": message["area"], "seq": message["seq"]}
        self._remember(camera, {"type": event, "received_at": now, **data})
        return event, camera, data

    def objects(self, message: dict[str, Any], now: float) -> Outgoing | None:
        camera, objects = message["camera"], message["objects"]
        if not objects:
            return None
        for item in objects:
            self.detections[camera, item["label"]] += 1
            self._remember(
                camera,
                {
                    "type": "object",
                    "received_at": now,
                    "seq": message["seq"],
                    "captured_at": message["captured_at"],
                    "label": item["label"],
                    "confidence": item["confidence"],
                    "box": list(item["box"]),
                },
            )
        bucket = self._buckets.get(camera)
        if bucket is None:
            bucket = self._buckets[camera] = TokenBucket(self.events_per_second, 1, now)
        if not bucket.take(now):
            self.suppressed[camera] += 1
            return None
        best = max(objects, key=lambda item: item["confidence"])
        data = {
            "seq": message["seq"],
            "captured_at": message["captured_at"],
            "width": message["width"],
            "height": message["height"],
            "model": message["model"],
            "label": best["label"],
            "confidence": best["confidence"],
            "box": list(best["box"]),
            "objects": [dict(item) for item in objects],
        }
        return "objects_detected", camera, data

    def status(self, message: dict[str, Any]) -> None:
        """The analyzer's counts since it started: added to ours (a restarted analyzer
        counts from zero again)."""
        for camera, analysed in message["analysed"].items():
            skipped = message["skipped"].get(camera, 0)
            last_analysed, last_skipped = self._reported.get(camera, (0, 0))
            self.analysed[camera] += analysed - last_analysed if analysed >= last_analysed else 0
            self.skipped[camera] += skipped - last_skipped if skipped >= last_skipped else 0
            self._reported[camera] = (analysed, skipped)
        self.lag.update(message["lag"])

    def restarted(self) -> None:
        """A new analyzer process: its counts start from zero."""
        self._reported.clear()

    def stop(self, camera: str, now: float) -> Outgoing | None:
        """Analysis of ``camera`` was turned off: motion, if any, stops now."""
        self.lag.pop(camera, None)
        if not self.motion_active.get(camera):
            return None
        self.motion_active[camera] = False
        data = {"time": time.time(), "area": 0.0, "seq": -1}
        self._remember(camera, {"type": "motion_stopped", "received_at": now, **data})
        return "motion_stopped", camera, data

    def since(self, camera: str, since: float) -> list[dict[str, Any]]:
        """Recent results of ``camera`` received after ``since`` (Unix seconds), oldest first."""
        return [dict(r) for r in self.recent.get(camera, ()) if r["received_at"] > since]

    def camera_stats(self, camera: str) -> dict[str, Any]:
        return {
            "motion_active": self.motion_active.get(camera, False),
            "motion_events": self.motion_events[camera],
            "detections": {
                label: n for (cam, label), n in sorted(self.detections.items()) if cam == camera
            },
            "analysed": self.analysed[camera],
            "skipped": self.skipped[camera],
            "lag_s": round(self.lag[camera], 4) if camera in self.lag else None,
        }

    def cameras(self) -> list[str]:
        seen = set(self.analysed) | set(self.motion_active) | {c for c, _ in self.detections}
        return sorted(seen)

    def forget(self, camera: str) -> None:
        """Drop everything kept for ``camera`` (the hub removed it), so ids that come
        and go stay bounded."""
        self.recent.pop(camera, None)
        self.motion_active.pop(camera, None)
        self.lag.pop(camera, None)
        self._buckets.pop(camera, None)
        self._reported.pop(camera, None)
        for counter in (self.motion_events, self.analysed, self.skipped, self.suppressed):
            counter.pop(camera, None)
        for key in [key for key in self.detections if key[0] == camera]:
            del self.detections[key]
