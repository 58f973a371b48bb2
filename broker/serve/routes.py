"""The plain HTTP routes: JSON API, camera snapshots and uploads, settings and presets,
static files. Each takes a parsed request and returns a `Response`; the connection
handling (h11, streaming outputs, WebSocket upgrades) lives in `broker.serve.server`.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import h11
import trio

from broker.config import Config
from broker.core import nodata
from broker.core.frame import Frame
from broker.core.hub import Camera, CameraInfo, Hub, Outcome
from broker.ingest.uploads import UploadError, parse_upload
from broker.protocol.results import CommandResult, http_status
from broker.protocol.wire import CAMERA_ID
from broker.serve.access import OPEN, Access, Grant
from broker.serve.http import Response, Target, error, header, json_response, parse_json
from broker.support.ratelimit import RateLimiter

if TYPE_CHECKING:
    from broker.control import Control

log = logging.getLogger("broker.server")

STATIC_FILES = {
    "/": "index.html", "/viewer.js": "viewer.js", "/settings.js": "settings.js",
    "/viewer.css": "viewer.css",
}  # fmt: skip
JSON_ROUTES = ("/healthz", "/api/cameras", "/api/stats", "/api/presets")
CAMERA_OUTPUTS = {
    "snapshot.jpg": "snapshot", "mjpeg": "mjpeg", "next.jpg": "next", "frames": "frames",
}  # fmt: skip
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
MAX_REQUEST_ID = 128


class BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True, slots=True)
class ControlPath:
    """``/api/cameras/{camera}/settings`` or ``/api/cameras/{camera}/presets/{preset}``."""

    camera: str
    preset: str | None = None


class Routes:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        health: Callable[[], dict[str, object]],
        metrics: Callable[[], bytes] | None,
        control: Control | None,
        access: Access,
    ) -> None:
        self.config = config
        self.hub = hub
        self.health = health
        self.metrics = metrics
        self.control = control
        self.access = access
        # HTTP commands, per token (or per address when no tokens are configured).
        self.command_limiter = RateLimiter(config.control.command_rate)

    # -- access ------------------------------------------------------------------

    def authorize(self, method: str, target: Target, token: str | None) -> Grant | Response:
        """The caller's grant, or the 401/403 answer that refuses the request."""
        if method == "OPTIONS":
            return OPEN  # CORS preflights carry no credentials and reveal nothing
        grant = self.access.check(token)
        if grant is None:
            return unauthorized(token)
        path = target.path
        camera_id, output = camera_path(path)
        control = control_path(path)
        camera_id = camera_id or (control.camera if control else "")
        if camera_id and not grant.can_watch(camera_id):
            return forbidden_camera(camera_id)
        writes = control is not None or output == "frames" or path == "/api/sessions"
        if writes and not grant.operator:
            return error(403, "forbidden", f"{method} {path} needs an operator token")
        if path == "/metrics" and grant.cameras is not None:
            return error(403, "forbidden", "/metrics covers every camera: it needs a token "
                         "that is not limited to some cameras")  # fmt: skip
        return grant

    # -- routes ----------------------------------------------------------------

    async def route(
        self,
        method: str,
        target: Target,
        request: h11.Request | None = None,
        body: bytes = b"",
        grant: Grant = OPEN,
        client_key: str = "",
    ) -> Response:
        path = target.path
        camera_id, output = camera_path(path)
        control = control_path(path)
        known = path in STATIC_FILES or path in JSON_ROUTES or path in ("/metrics", "/ws") or output
        if not known and path != "/api/sessions" and control is None:
            return error(404, "not_found", f"nothing at {path}")
        if output == "frames" or path == "/api/sessions" or (control and control.preset):
            allowed = "POST"
        elif control is not None:
            allowed = "GET, PATCH"
        else:
            allowed = "GET, HEAD"
        if method == "OPTIONS":
            return Response(204, headers=[("allow", f"{allowed}, OPTIONS")])
        if method not in allowed.split(", "):
            return error(405, "method_not_allowed", f"{method} is not allowed on {path}",
                         allow=allowed)  # fmt: skip
        if control is not None:
            request_id = header(request, b"x-request-id")[:MAX_REQUEST_ID] if request else ""
            return await self.command(method, control, body, client_key, request_id or None)
        if path == "/api/sessions":
            return self.create_session()
        if output == "frames" and camera_id not in self.hub.cameras:
            if not self.hub.accept_unknown or not CAMERA_ID.fullmatch(camera_id):
                return error(404, "unknown_camera", f"no camera {camera_id!r}")
        elif output and camera_id not in self.hub.cameras:
            return error(404, "unknown_camera", f"no camera {camera_id!r}")
        if output == "frames":
            content_type = header(request, b"content-type") if request else ""
            return self.upload(camera_id, content_type, body)
        if output == "next":
            return await self.next_image(camera_id, target)
        if output == "websocket" or path == "/ws":
            return error(426, "upgrade_required",
                         f"{path} is a WebSocket endpoint: connect with ws://",
                         upgrade="websocket")  # fmt: skip
        if output == "snapshot":
            return await self.snapshot(camera_id)
        if path == "/metrics" and self.metrics is not None:
            return Response(200, self.metrics(), METRICS_TYPE)
        if path == "/healthz":
            return json_response(self.health())
        if path == "/api/cameras":
            return json_response(self.cameras(grant))
        if path == "/api/stats":
            return json_response(self.stats(grant))
        if path == "/api/presets":
            return json_response(self.config.presets)
        if path == "/" and not self.access.open and target.param("token"):
            return index_with_token(target.param("token") or "")
        if path in STATIC_FILES:
            return static(STATIC_FILES[path])
        return error(404, "not_found", f"nothing at {path}")

    def cameras(self, grant: Grant = OPEN) -> list[dict[str, object]]:
        """The cameras ``grant`` may see, with their settings when the control plane
        knows them."""
        now = time.monotonic()
        return [
            self._with_control(camera.summary(now))
            for camera in self.hub.cameras.values()
            if grant.can_watch(camera.id)
        ]

    def _with_control(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A camera summary with what the control plane knows: settings, streaming,
        connected (its worker's control channel) and on_demand."""
        if self.control is not None:
            summary.update(self.control.camera_status(summary["id"]))
        return summary

    def stats(self, grant: Grant = OPEN) -> dict[str, object]:
        now = time.monotonic()
        cameras = []
        for camera in self.hub.cameras.values():
            if not grant.can_watch(camera.id):
                continue
            sent, dropped, sent_bytes = camera.delivery_totals()
            cameras.append({
                **self._with_control(camera.summary(now)),
                "frames_sent": sent, "frames_dropped": dropped, "bytes_sent": sent_bytes,
                "subscribers": [s.stats(now) for s in camera.subscribers],
            })  # fmt: skip
        return {**self.health(), "cameras": cameras}

    # -- settings and presets ----------------------------------------------------

    async def command(
        self, method: str, path: ControlPath, body: bytes, client_key: str,
        request_id: str | None,
    ) -> Response:  # fmt: skip
        """GET/PATCH settings and POST a preset: the same path as a /ws command."""
        if not self.command_limiter.allow(client_key):
            rate = self.config.control.command_rate
            return error(429, "rate_limited", f"more than {rate:g} commands a second",
                         retry_after="1")  # fmt: skip
        if self.control is None:
            return error(503, "no_control", "the broker has no control channel")
        if path.preset is not None:
            status = await self.control.apply_preset(path.camera, path.preset, request_id)
        elif method == "GET":
            status = await self.control.command(path.camera, "get_status", None, request_id)
            # What the camera accepts, so a client can build a form for its settings.
            return status_response(status, supported=self.control.supported(path.camera))
        else:
            try:
                settings = parse_json(body)
            except ValueError as exc:  # also UnicodeDecodeError
                return error(400, "invalid_json", f"the body is not JSON: {exc}")
            if not isinstance(settings, dict):
                return error(400, "invalid_json", "the body must be a JSON object of settings")
            status = await self.control.command(path.camera, "update_settings", settings,
                                                request_id)  # fmt: skip
        return status_response(status)

    # -- camera outputs ----------------------------------------------------------

    def upload(self, camera_id: str, content_type: str, body: bytes) -> Response:
        """A frame POSTed by a producer: checked, then published like a worker's frame."""
        try:
            image = parse_upload(content_type, body, self.config.ingest.max_width,
                                 self.config.ingest.max_height)  # fmt: skip
        except UploadError as bad:
            return error(bad.status, bad.code, str(bad))
        camera = self.hub.cameras.get(camera_id)
        seq = camera.upload_seq if camera is not None else 0
        frame = Frame(camera_id, seq, time.time(), image.width, image.height, image.format,
                      image.data, time.monotonic())  # fmt: skip
        outcome = self.hub.publish(frame)
        if outcome is Outcome.UNKNOWN:
            return error(404, "unknown_camera", f"no camera {camera_id!r}")
        if outcome is Outcome.FULL:
            return error(503, "too_many_cameras", "the broker holds ingest.max_cameras "
                         f"({self.hub.max_cameras}) cameras already; try again later")  # fmt: skip
        if outcome is Outcome.STALE:
            return error(409, "stale_frame", "the frame is older than the camera's newest "
                         "by more than ingest.offline_after; it was not shown")  # fmt: skip
        self.hub.cameras[camera_id].upload_seq = seq + 1
        return json_response({"camera": camera_id, "seq": seq, "width": image.width,
                              "height": image.height, "format": image.format}, 201)  # fmt: skip

    def create_session(self) -> Response:
        """An ad-hoc camera for an HTTP producer (seed 003's session)."""
        if not self.config.ingest.http_sessions:
            return error(403, "sessions_disabled", "ingest.http_sessions is off in the config")
        if self.hub.full:
            return error(503, "too_many_cameras", "the broker holds ingest.max_cameras "
                         f"({self.hub.max_cameras}) cameras already; try again later",
                         retry_after=str(round(self.config.ingest.session_ttl)))  # fmt: skip
        camera_id = "session-" + secrets.token_hex(4)
        self.hub.add_camera(CameraInfo(camera_id, camera_id, 1280, 720, configured=False,
                                       session=True))  # fmt: skip
        log.info("camera %s: ad-hoc session created", camera_id)
        base = f"/cameras/{camera_id}"
        return json_response({
            "id": camera_id, "ttl_s": self.config.ingest.session_ttl,
            "upload": base + "/frames", "websocket": base, "snapshot": base + "/snapshot.jpg",
            "mjpeg": base + "/mjpeg", "next": base + "/next.jpg",
        }, 201)  # fmt: skip

    async def next_image(self, camera_id: str, target: Target) -> Response:
        """Frames in order (seed 003): the oldest retained frame newer than ``after``,
        waiting up to ``timeout`` seconds for one, else the "No Data" image."""
        try:
            after = int(target.param("after") or -1)
            timeout = float(target.param("timeout") or 10)
            if not 0 <= timeout <= 60:
                raise ValueError
        except ValueError:
            return error(400, "bad_query", "after must be an integer and timeout a number "
                         "of seconds from 0 to 60")  # fmt: skip
        camera = self.hub.camera(camera_id)
        with trio.move_on_after(timeout):
            while (frame := self.hub.next_after(camera, after)) is None:
                await camera.arrived.wait()
            return frame_response(frame, time.monotonic())
        return await self._no_data(camera, time.monotonic())

    async def snapshot(self, camera_id: str) -> Response:
        """The latest fresh frame, else the "No Data" image."""
        camera = self.hub.camera(camera_id)
        now = time.monotonic()
        frame = camera.latest
        if frame is not None and camera.online:
            return frame_response(frame, now)
        return await self._no_data(camera, now)

    async def _no_data(self, camera: Camera, now: float) -> Response:
        """The "No Data" image, at a capped size and from the cache when it can be."""
        image = await nodata.image(camera.info.name, *camera.size, camera.silent_for(now))
        return Response(200, image.data, "image/jpeg", [("x-camera-online", "false")])

    def stream_target(self, target: Target) -> tuple[str, float | None]:
        """The camera and fps cap a camera WebSocket upgrade asks for, or BadRequest."""
        camera_id, output = camera_path(target.path)
        if target.path == "/":
            default = self.config.default_camera
            if default is None:
                raise BadRequest(error(404, "no_camera", "no camera is configured"))
            camera_id = default
        elif output != "websocket":
            raise BadRequest(error(404, "not_found", f"no WebSocket endpoint at {target.path}"))
        if camera_id not in self.hub.cameras:
            raise BadRequest(error(404, "unknown_camera", f"no camera {camera_id!r}"))
        return camera_id, fps_cap(target)


def unauthorized(token: str | None) -> Response:
    """401 with the RFC 6750 challenge; ``error="invalid_token"`` when one was given."""
    challenge = 'Bearer realm="camera-broker"'
    if token:
        challenge += ', error="invalid_token"'
        message = "the token is not valid"
    else:
        message = "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN"
    return error(401, "unauthorized", message, www_authenticate=challenge)


def forbidden_camera(camera_id: str) -> Response:
    return error(403, "forbidden", f"this token may not access camera {camera_id!r}")


def status_response(status: CommandResult, **extra: object) -> Response:
    """The CommandResult as JSON (plus ``extra`` fields) with its HTTP status."""
    code = 200 if status.success else http_status(status.error or "worker_error")
    return json_response({**status.to_json(), **extra}, code)


def camera_path(path: str) -> tuple[str, str | None]:
    """``/cameras/{id}[/output]`` → (id, "websocket" | "snapshot" | "mjpeg"), else ("", None)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "cameras" or not parts[2]:
        return "", None
    if len(parts) == 3:
        return parts[2], "websocket"
    if len(parts) == 4 and parts[3] in CAMERA_OUTPUTS:
        return parts[2], CAMERA_OUTPUTS[parts[3]]
    return "", None


def control_path(path: str) -> ControlPath | None:
    """``/api/cameras/{id}/settings`` and ``/api/cameras/{id}/presets/{name}``, else None."""
    parts = path.split("/")
    if len(parts) < 5 or parts[1:3] != ["api", "cameras"] or not parts[3]:
        return None
    if len(parts) == 5 and parts[4] == "settings":
        return ControlPath(parts[3])
    if len(parts) == 6 and parts[4] == "presets" and parts[5]:
        return ControlPath(parts[3], parts[5])
    return None


def fps_cap(target: Target) -> float | None:
    fps = target.param("fps")
    if fps is None:
        return None
    try:
        max_fps = float(fps)
    except ValueError:
        max_fps = math.nan
    if not 0 < max_fps <= 1000:
        raise BadRequest(
            error(400, "bad_fps", f"fps must be a number above 0 and at most 1000, got {fps!r}")
        )
    return max_fps


def frame_response(frame: Frame, now: float) -> Response:
    age = round((now - frame.received_at) * 1000)
    headers = [("x-frame-seq", str(frame.seq)), ("x-frame-age-ms", str(age)),
               ("x-frame-captured-at", f"{frame.captured_at:.6f}")]  # fmt: skip
    return Response(200, bytes(frame.data), f"image/{frame.format}", headers)


def static(name: str) -> Response:
    data = resources.files("broker.serve").joinpath("static", name).read_bytes()
    suffix = name[name.rfind(".") :]
    return Response(200, data, STATIC_TYPES[suffix])


def index_with_token(token: str) -> Response:
    """The viewer page opened as ``/?token=T``: its script and style sheet are protected
    too, so their URLs carry the token (viewer.js passes it on to its own requests)."""
    page = static("index.html")
    suffix = ("?token=" + quote(token, safe="")).encode()
    for asset in (b'"/viewer.js"', b'"/settings.js"', b'"/viewer.css"'):
        page.body = page.body.replace(asset, asset[:-1] + suffix + b'"')
    return page
