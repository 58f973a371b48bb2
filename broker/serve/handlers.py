"""The answers to plain HTTP requests, by route kind: the JSON views, camera snapshots
and frames in order, uploads and sessions (`broker.ingest`), settings and presets (the
control plane), metrics and the static viewer page. Each takes an authorized `Route`
and returns a `Response`; reading requests, streaming outputs and WebSocket upgrades
are `broker.serve.server`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import quote

import h11
import trio

from broker.config import Config
from broker.core.camera import Camera
from broker.core.frame import Frame
from broker.core.hub import Hub
from broker.ingest.offline import no_data_image
from broker.ingest.sessions import SessionRefused, open_session
from broker.ingest.uploads import UploadError, check_camera, parse_upload, publish_upload
from broker.protocol.results import CommandResult, http_status
from broker.serve.access import OPEN, Access, Grant
from broker.serve.derive import Deriver
from broker.serve.http import Response, error, header, json_response, parse_json
from broker.serve.router import STATIC_FILES, CommandRate, Kind, Route
from broker.serve.views import Views

if TYPE_CHECKING:
    from broker.control import Control

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The viewer page's policy: its own scripts and styles only (none inline), images from
# itself and the blob: URLs it makes of frames, connections to itself (fetch, ws, wss).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'"
)
MAX_REQUEST_ID = 128
THREAD_CHECK_BYTES = 1024 * 1024  # uploads this large are checked in a worker thread
CAMERA_KINDS = frozenset((Kind.WEBSOCKET, Kind.SNAPSHOT, Kind.MJPEG, Kind.NEXT, Kind.DETECTIONS))


class Handlers:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        views: Views,
        metrics: Callable[[], bytes] | None,
        control: Control | None,
        access: Access,
        commands: CommandRate,
        deriver: Deriver,
    ) -> None:
        self.config = config
        self.hub = hub
        self.views = views
        self.metrics = metrics
        self.control = control
        self.access = access
        self.commands = commands
        self.deriver = deriver  # the JPEG of a raw-format frame for snapshot and next.jpg
        self._checking = trio.Lock()  # one large upload checked at a time

    async def answer(
        self,
        method: str,
        route: Route,
        request: h11.Request | None = None,
        body: bytes = b"",
        grant: Grant = OPEN,
        client_key: str = "",
    ) -> Response:
        kind, path = route.kind, route.path
        if kind is Kind.NOT_FOUND:
            return error("not_found", f"nothing at {path}")
        allowed = ", ".join(route.methods)
        if method == "OPTIONS":
            return Response(204, headers=[("allow", f"{allowed}, OPTIONS")])
        if method not in route.methods:
            return error("method_not_allowed", f"{method} is not allowed on {path}", allow=allowed)
        if route.command:
            request_id = header(request, b"x-request-id")[:MAX_REQUEST_ID] if request else ""
            return await self.command(method, route, body, client_key, request_id or None)
        if kind is Kind.SESSIONS:
            return self.create_session()
        if kind is Kind.FRAMES:
            content_type = header(request, b"content-type") if request else ""
            size = header(request, b"x-frame-size") if request else ""
            return await self.upload(route.camera, content_type, body, size or route.param("size"))
        if kind in CAMERA_KINDS and route.camera not in self.hub.cameras:
            return error("unknown_camera", f"no camera {route.camera!r}")
        if kind is Kind.NEXT:
            return await self.next_image(route.camera, route)
        if kind is Kind.DETECTIONS:
            return self.detections(route)
        if kind is Kind.WEBSOCKET or kind is Kind.MUX:
            return error(
                "upgrade_required",
                f"{path} is a WebSocket endpoint: connect with ws://",
                upgrade="websocket",
            )
        if kind is Kind.SNAPSHOT:
            return await self.snapshot(route.camera)
        if kind is Kind.METRICS and self.metrics is not None:
            return Response(200, self.metrics(), METRICS_TYPE)
        if kind is Kind.HEALTH:
            return json_response(self.views.health())
        if kind is Kind.CAMERAS:
            return json_response(self.views.cameras(grant))
        if kind is Kind.STATS:
            return json_response(self.views.stats(grant))
        if kind is Kind.PRESETS:
            return json_response(self.views.presets())
        if path == "/" and not self.access.open and route.param("token"):
            return index_with_token(route.param("token") or "")
        if path in STATIC_FILES:
            return static(STATIC_FILES[path])
        return error("not_found", f"nothing at {path}")

    # -- settings and presets ----------------------------------------------------

    async def command(
        self, method: str, route: Route, body: bytes, client_key: str, request_id: str | None
    ) -> Response:
        """GET/PATCH settings and POST a preset: the same path as a /ws command."""
        if not self.commands.allow(client_key):
            return error("rate_limited", self.commands.refusal(), retry_after="1")
        if self.control is None:
            return error("no_control", "the broker has no control channel")
        camera = route.camera
        if route.preset is not None:
            status = await self.control.apply_preset(camera, route.preset, request_id)
        elif method == "GET":
            status = await self.control.command(camera, "get_status", None, request_id)
            # What the camera accepts, so a client can build a form for its settings.
            return status_response(status, supported=self.control.supported(camera))
        else:
            try:
                settings = parse_json(body)
            except ValueError as exc:  # also UnicodeDecodeError
                return error("invalid_json", f"the body is not JSON: {exc}")
            if not isinstance(settings, dict):
                return error("invalid_json", "the body must be a JSON object of settings")
            status = await self.control.command(camera, "update_settings", settings, request_id)
        return status_response(status)

    # -- producers -----------------------------------------------------------------

    async def upload(
        self, camera_id: str, content_type: str, body: bytes, frame_size: str | None = None
    ) -> Response:
        """A frame POSTed by a producer: checked, then published like a worker's frame.
        A large body is checked in a worker thread (an LZ4 upload is decompressed to
        prove its size), one at a time, so the event loop never waits on it."""
        ingest = self.config.ingest
        try:
            check_camera(self.hub, camera_id)
            args = (content_type, body, ingest.max_width, ingest.max_height, frame_size or "")
            if len(body) < THREAD_CHECK_BYTES:
                image = parse_upload(*args)
            else:
                async with self._checking:
                    image = await trio.to_thread.run_sync(parse_upload, *args)
            frame = publish_upload(self.hub, camera_id, image)
        except UploadError as bad:
            return error(bad.code, str(bad))
        return json_response(
            {
                "camera": camera_id,
                "seq": frame.seq,
                "width": frame.width,
                "height": frame.height,
                "format": frame.format,
            },
            201,
        )

    def create_session(self) -> Response:
        """An ad-hoc camera for an HTTP producer (docs/protocol.md, sessions)."""
        try:
            camera_id = open_session(self.hub, self.config.ingest)
        except SessionRefused as refused:
            response = error(refused.code, str(refused))
            if refused.retry_after is not None:
                response.headers.append(("retry-after", refused.retry_after))
            return response
        base = f"/cameras/{camera_id}"
        return json_response(
            {
                "id": camera_id,
                "ttl_s": self.config.ingest.session_ttl,
                "upload": base + "/frames",
                "websocket": base,
                "snapshot": base + "/snapshot.jpg",
                "mjpeg": base + "/mjpeg",
                "next": base + "/next.jpg",
            },
            201,
        )

    # -- camera images -------------------------------------------------------------

    async def next_image(self, camera_id: str, route: Route) -> Response:
        """Frames in order: the oldest retained frame newer than ``after``,
        waiting up to ``timeout`` seconds for one, else the "No Data" image."""
        try:
            after = int(route.param("after") or -1)
            timeout = float(route.param("timeout") or 10)
            if not 0 <= timeout <= 60:
                raise ValueError
        except ValueError:
            return error(
                "bad_query", "after must be an integer and timeout a number of seconds from 0 to 60"
            )
        camera = self.hub.camera(camera_id)
        with trio.move_on_after(timeout):
            while (frame := self.hub.next_after(camera, after)) is None:
                await next_arrival(camera)
            return await self._frame_response(camera, frame)
        return await self._no_data(camera, time.monotonic())

    def detections(self, route: Route) -> Response:
        """Recent analytics results of a camera, received after ``since`` (Unix seconds)."""
        text = route.param("since") or "0"
        try:
            since = float(text)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return error("bad_request", f"since must be a time in Unix seconds, got {text[:40]!r}")
        return json_response(self.views.detections(route.camera, since))

    async def snapshot(self, camera_id: str) -> Response:
        """The latest fresh frame, else the "No Data" image."""
        camera = self.hub.camera(camera_id)
        now = time.monotonic()
        frame = camera.latest
        if frame is not None and camera.online:
            return await self._frame_response(camera, frame)
        return await self._no_data(camera, now)

    async def _frame_response(self, camera: Camera, frame: Frame) -> Response:
        """``frame`` as a browser image: itself, or the JPEG derived from it (made now
        in a worker thread if nobody made it yet, and kept for the next request)."""
        image = await self.deriver.jpeg_of(camera, frame)
        if image is None:  # a broken frame (counted): nothing better than "No Data"
            return await self._no_data(camera, time.monotonic())
        return frame_response(image, time.monotonic())

    async def _no_data(self, camera: Camera, now: float) -> Response:
        """The "No Data" image (a JPEG), at a capped size and from the cache when it can be."""
        image = await no_data_image(camera, now)
        return Response(200, image.data, "image/jpeg", [("x-camera-online", "false")])


async def next_arrival(camera: Camera) -> None:
    """Wait for the camera's next frame (`Hub.publish` wakes every waiter once)."""
    arrived = trio.Event()
    camera.arrivals.add(arrived.set)
    try:
        await arrived.wait()
    finally:
        camera.arrivals.discard(arrived.set)


def status_response(status: CommandResult, **extra: object) -> Response:
    """The CommandResult as JSON (plus ``extra`` fields) with its HTTP status."""
    code = 200 if status.success else http_status(status.error or "worker_error")
    return json_response({**status.to_json(), **extra}, code)


def frame_response(frame: Frame, now: float) -> Response:
    age = round((now - frame.received_at) * 1000)
    headers = [
        ("x-frame-seq", str(frame.seq)),
        ("x-frame-age-ms", str(age)),
        ("x-frame-captured-at", f"{frame.captured_at:.6f}"),
    ]
    return Response(200, bytes(frame.data), f"image/{frame.format}", headers)


def static(name: str) -> Response:
    data = resources.files("broker.serve").joinpath("static", name).read_bytes()
    suffix = name[name.rfind(".") :]
    return Response(
        200, data, STATIC_TYPES[suffix], [("content-security-policy", CONTENT_SECURITY_POLICY)]
    )


def index_with_token(token: str) -> Response:
    """The viewer page opened as ``/?token=T``: its script and style sheet are protected
    too, so their URLs carry the token (viewer.js passes it on to its own requests)."""
    page = static("index.html")
    suffix = ("?token=" + quote(token, safe="")).encode()
    for asset in (b'"/viewer.js"', b'"/settings.js"', b'"/analytics.js"', b'"/viewer.css"'):
        page.body = page.body.replace(asset, asset[:-1] + suffix + b'"')
    return page
