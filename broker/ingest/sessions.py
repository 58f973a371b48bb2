"""Ad-hoc cameras for HTTP producers : ``POST /api/sessions`` makes
one, its producer uploads frames to it, and it is forgotten after ``ingest.session_ttl``
without a frame (`broker.core.watcher`). Synchronous; the HTTP edge answers.
"""

from __future__ import annotations

import logging
import secrets

from broker.config import IngestConfig
from broker.core.camera import CameraInfo
from broker.core.hub import Hub

log = logging.getLogger("broker.ingest")

SESSION_SIZE = (1280, 720)  # until its first frame says otherwise


class SessionRefused(Exception):
    """No session was made: ``code`` (from `broker.protocol.results.ERRORS`), and when
    to try again, if it is worth it."""

    def __init__(self, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.code, self.retry_after = code, retry_after


def open_session(hub: Hub, config: IngestConfig) -> str:
    """A new ad-hoc camera's id, or `SessionRefused` (sessions off, or the broker full)."""
    if not config.http_sessions:
        raise SessionRefused("sessions_disabled", "ingest.http_sessions is off in the config")
    if hub.full:
        raise SessionRefused(
            "too_many_cameras",
            f"the broker holds ingest.max_cameras ({hub.max_cameras}) cameras already; try "
            "again later",
            retry_after=str(round(config.session_ttl)),
        )
    camera_id = "session-" + secrets.token_hex(4)
    hub.add_camera(CameraInfo(camera_id, camera_id, *SESSION_SIZE, configured=False, session=True))
    log.info("camera %s: ad-hoc session created", camera_id)
    return camera_id
