"""The JSON views of the broker's state: cameras, statistics, presets and health. The
same values answer HTTP (``/api/cameras``, ``/api/stats``, ``/api/presets``,
``/healthz``) and ``/ws`` (``list_cameras``, ``get_stats``). Read from the core at the
moment they are asked for; each takes the caller's `Grant` and shows only the cameras
it may see.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.config import Config
from broker.core.hub import Hub
from broker.serve.access import OPEN, Grant

if TYPE_CHECKING:
    from broker.analytics import Analytics
    from broker.control import Control


class Views:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        health: Callable[[], dict[str, object]],
        control: Control | None = None,
        analytics: Analytics | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self._health = health
        self.control = control
        self.analytics = analytics

    def health(self) -> dict[str, object]:
        return self._health()

    def presets(self) -> dict[str, dict[str, Any]]:
        return self.config.presets

    def cameras(self, grant: Grant = OPEN) -> list[dict[str, object]]:
        """The cameras ``grant`` may see, with their settings when the control plane
        knows them."""
        now = time.monotonic()
        return [
            self._with_control(camera.summary(now))
            for camera in self.hub.cameras.values()
            if grant.can_watch(camera.id)
        ]

    def stats(self, grant: Grant = OPEN) -> dict[str, object]:
        """Health, and per camera its summary, delivery totals and each subscriber."""
        now = time.monotonic()
        cameras = []
        for camera in self.hub.cameras.values():
            if not grant.can_watch(camera.id):
                continue
            sent, dropped, sent_bytes = camera.delivery_totals()
            cameras.append(
                {
                    **self._with_control(camera.summary(now)),
                    "frames_sent": sent,
                    "frames_dropped": dropped,
                    "bytes_sent": sent_bytes,
                    "subscribers": [s.stats(now) for s in camera.subscribers],
                    **self._analytics(camera.id),
                }
            )
        return {**self.health(), "cameras": cameras}

    def _analytics(self, camera: str) -> dict[str, Any]:
        """The camera's analytics counts, when analytics is enabled."""
        if self.analytics is None:
            return {}
        return {"analytics": self.analytics.results.camera_stats(camera)}

    def detections(self, camera: str, since: float) -> dict[str, Any]:
        """Recent analytics results of ``camera`` (GET /api/cameras/{id}/detections)."""
        if self.analytics is None:
            return {"camera": camera, "enabled": False, "motion_active": False, "results": []}
        return self.analytics.detections(camera, since)

    def _with_control(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A camera summary with what the control plane knows: settings, streaming,
        connected (its worker's control channel) and on_demand."""
        if self.control is not None:
            summary.update(self.control.camera_status(summary["id"]))
        camera = self.config.camera(summary["id"])
        # The capture device the broker's worker opens: a path, or an index (OpenCV's).
        summary["device"] = camera.device if camera is not None and camera.device != "" else None
        return summary
