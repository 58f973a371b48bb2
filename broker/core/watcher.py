"""Cameras gone quiet, looked at once a second: what is due now. Pure and synchronous.

`Watcher.due` forgets retained frames past their age, forgets ad-hoc sessions and
unwatched unconfigured cameras silent for ``ingest.session_ttl`` (a bounded set however
many ids peers invent), marks cameras silent for ``ingest.offline_after`` offline, and
returns the offline cameras someone watches: each is due a "No Data" image, which
`Watcher.show_no_data` hands to its viewers. Rendering the image and sleeping between
looks are the runner's (`broker.ingest.offline.watch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broker.core.camera import Camera
from broker.core.frame import Frame
from broker.core.hub import Hub
from broker.core.nodata import Placeholder

log = logging.getLogger("broker")


def _keep(camera_id: str) -> None:
    pass


class Watcher:
    def __init__(self, hub: Hub, session_ttl: float, forget: Callable[[str], None] = _keep) -> None:
        self.hub = hub
        self.session_ttl = session_ttl
        self.forget = forget  # told the id of each camera removed (its metrics go)

    def due(self, now: float) -> list[Camera]:
        """Expire what is too old, mark silent cameras offline; the offline cameras with
        viewers, each due a "No Data" image."""
        self.hub.expire(now)
        self.expire_cameras(now)
        return [camera for camera in self.hub.mark_offline(now) if camera.subscribers]

    def expire_cameras(self, now: float) -> None:
        """Forget ad-hoc sessions, and unwatched unconfigured cameras, silent for
        ``session_ttl``."""
        ttl = self.session_ttl
        for camera in list(self.hub.cameras.values()):
            last = camera.last_frame_at or camera.created_at
            if camera.info.configured or now - last <= ttl:
                continue
            if camera.info.session:
                log.info(
                    "camera %s: ad-hoc session expired after %.0f s without frames",
                    camera.id,
                    now - last,
                )
            elif camera.subscribers:
                continue  # an unconfigured camera someone watches stays, offline
            else:
                log.info(
                    "camera %s: unconfigured camera forgotten after %.0f s without frames",
                    camera.id,
                    now - last,
                )
            self.hub.remove_camera(camera)
            self.forget(camera.id)

    def show_no_data(self, camera: Camera, image: Placeholder) -> None:
        """Offer ``image`` to the viewers of offline ``camera``, numbered as its last
        frame."""
        last_seq = camera.latest.seq if camera.latest is not None else 0
        format, data, width, height = image.image
        frame = Frame.received(
            camera.id, last_seq, time.time(), width, height, format, data, placeholder=True
        )
        if format != "jpeg":  # browser outputs get the JPEG
            frame.derive(image.data)
            assert frame.derived is not None
            frame.derived.width, frame.derived.height = image.width, image.height
        self.hub.publish_placeholder(camera, frame)
