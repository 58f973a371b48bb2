"""What the hub and control tell each other, translated in one place.

- The hub's camera transitions become events: ``camera_online`` (with the frame size)
  and ``camera_offline`` (`announce_cameras`).
- A worker's ``name`` setting becomes the camera's display name in the hub
  (`show_names`, a `Control.on_settings` hook the composition root installs): control
  itself never changes hub objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.config import Config
from broker.core.camera import Camera
from broker.core.events import EventBus
from broker.core.hub import Hub, HubHooks


def announce_cameras(hooks: HubHooks, events: EventBus) -> None:
    """Publish the hub's online and offline transitions on ``events``."""

    def online(camera: Camera) -> None:
        latest = camera.latest
        size = (
            {"width": latest.width, "height": latest.height, "format": latest.format}
            if (latest is not None)
            else {}
        )
        events.publish("camera_online", camera.id, **size)

    def offline(camera: Camera) -> None:
        events.publish("camera_offline", camera.id)

    hooks.online = online
    hooks.offline = offline


def display_name(config: Config, camera: str, settings: Mapping[str, Any]) -> str | None:
    """The ``name`` setting is the camera's display name; "" shows the configured one
    (the id for a camera not in the config)."""
    configured = config.camera(camera)
    fallback = configured.display_name if configured is not None else camera
    name = settings.get("name") or fallback
    return name if isinstance(name, str) else None


def show_names(config: Config, hub: Hub) -> Callable[[str, Mapping[str, Any]], None]:
    """A `Control.on_settings` hook that shows each camera's display name in ``hub``."""

    def show(camera: str, settings: Mapping[str, Any]) -> None:
        name = display_name(config, camera, settings)
        if name is not None:
            hub.rename(camera, name)

    return show
