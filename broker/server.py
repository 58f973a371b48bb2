"""One TCP port for HTTP and WebSocket.

Every connection is read with h11. Plain requests are answered here; a WebSocket
upgrade for a camera is handed to trio-websocket (see `broker.wsframes`) and then fed
from that client's own drop-oldest queue. Each connection has its own task and
nursery; nothing a client does, or fails to do, can hold another client up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from broker import nodata
from broker.config import Config
from broker.frames import MJPEG_BOUNDARY, Frame
from broker.http import Response, Target, error, h11_response, header, json_response, parse_target
from broker.hub import Camera, CameraInfo, Hub, Subscriber, SubscriptionEnded
from broker.ratelimit import RateLimitedLog
from broker.uploads import UploadError, parse_upload
from broker.wsframes import (
    ReplayStream,
    close_going_away,
    is_websocket_upgrade,
    request_bytes,
    send_prebuilt,
)
from cameras.wire import CAMERA_ID

log = logging.getLogger("broker.server")

MAX_REQUEST_HEAD = 16 * 1024
MAX_INCOMING_WS_MESSAGE = 64 * 1024
# Bytes the kernel may hold unsent per client. Without a bound a slow reader sits
# seconds behind on frames the kernel already accepted, whatever our queue drops.
NOTSENT_LOWAT = 64 * 1024
STATIC_FILES = {"/": "index.html", "/viewer.js": "viewer.js", "/viewer.css": "viewer.css"}
JSON_ROUTES = ("/healthz", "/api/cameras", "/api/stats")
CAMERA_OUTPUTS = {
    "snapshot.jpg": "snapshot", "mjpeg": "mjpeg", "next.jpg": "next", "frames": "frames",
}  # fmt: skip
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MJPEG_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    f"Content-Type: multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}\r\n"
    "Cache-Control: no-store\r\n"
    "Connection: close\r\n\r\n"  # the body ends when the connection does
).encode()
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


class BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Server:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        health: Callable[[], dict[str, object]],
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.hub = hub
        self.health = health
        self.http_errors: Counter[int] = Counter()
        self.slow_disconnects = 0
        self.started_at = time.monotonic()
        self.port = 0
        self._complaints = RateLimitedLog(log)

    async def listen(self) -> list[trio.SocketListener]:
        """Bind ``server.listen``; raises OSError (port in use, say) before anything starts."""
        server = self.config.server
        listeners = await trio.open_tcp_listeners(server.port, host=server.host or None)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("listening on http://%s:%d/", server.host, self.port)
        return listeners

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        """Serve HTTP and WebSocket on ``listeners`` until cancelled."""
        await trio.serve_listeners(self.handle_connection, listeners)

    # -- connections ---------------------------------------------------------

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            host, port = stream.socket.getpeername()[:2]
        except OSError:  # the client is already gone
            await trio.aclose_forcefully(stream)
            return
        client = f"{host}:{port}"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                request = await self._receive_request(stream, conn, client)
                if request is None:
                    return
                if is_websocket_upgrade(request):
                    await self._websocket(stream, conn, request, client)
                    return
                await self._answer(stream, conn, request, client)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            self._count(400)
            self._complaints.warning("400", "client %s: malformed request: %s", client, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(stream, conn, error(400, "bad_request", str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _receive_request(
        self, stream: trio.SocketStream, conn: h11.Connection, client: str
    ) -> h11.Request | None:
        """The next request head, or None when the client closed or took too long."""
        with trio.move_on_after(self.config.server.header_timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(64 * 1024))
                    continue
                if isinstance(event, h11.Request):
                    return event
                return None  # ConnectionClosed
        if conn.their_state is h11.SEND_BODY or conn.trailing_data[0]:
            self._complaints.warning(
                "timeout",
                "client %s: no complete request within %.1f s; disconnected",
                client,
                self.config.server.header_timeout,
            )
        return None

    async def _send(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        response: Response,
        head_only: bool = False,
        origin: h11.Request | None = None,
    ) -> None:
        if origin is not None:
            response.headers.extend(self._cors(origin))
        head, body = h11_response(response, head_only=head_only)
        with trio.move_on_after(self.config.server.send_timeout):
            data = conn.send(head)
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)

    def _cors(self, request: h11.Request) -> list[tuple[str, str]]:
        """CORS headers, only for origins the config allows."""
        allowed = self.config.server.cors_origins
        origin = header(request, b"origin")
        if not allowed or not origin:
            return []
        if "*" in allowed:
            headers = [("access-control-allow-origin", "*")]
        elif origin in allowed:
            headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
        else:
            return []
        if request.method == b"OPTIONS":
            headers += [("access-control-allow-methods", "GET, HEAD, POST, OPTIONS"),
                        ("access-control-allow-headers", "content-type, authorization"),
                        ("access-control-max-age", "600")]  # fmt: skip
        return headers

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, client: str
    ) -> None:
        method = request.method.decode("ascii", "replace")
        target = parse_target(request.target)
        camera_id, output = camera_path(target.path)
        # Only uploads carry a body; anything else may bring a small one, drained.
        limit = self.config.ingest.max_frame_bytes if output == "frames" else MAX_REQUEST_HEAD
        body = await self._read_body(stream, conn, request, limit)
        if body is None:
            response = error(413, "too_large", f"the request body exceeds {limit} bytes")
            self._count(413)
            await self._send(stream, conn, response, origin=request)
            raise trio.ClosedResourceError  # the rest of the body is unread: close
        if output == "mjpeg" and method in ("GET", "HEAD") and camera_id in self.hub.cameras:
            try:
                max_fps = fps_cap(target)
            except BadRequest as bad:
                response = bad.response
            else:
                await self._mjpeg(stream, camera_id, max_fps, client, head_only=method == "HEAD")
                raise trio.ClosedResourceError  # the stream is over: close the connection
        else:
            response = await self.route(method, target, request, body)
        if response.status >= 400:
            self._count(response.status)
        await self._send(stream, conn, response, head_only=method == "HEAD", origin=request)

    async def _read_body(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, limit: int
    ) -> bytes | None:
        """The request body, or None when it is larger than ``limit``."""
        declared = header(request, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        with trio.move_on_after(self.config.server.header_timeout) as timer:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(64 * 1024))
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        return None
                    chunks.append(event.data)
                else:
                    return b"".join(chunks)
        if timer.cancelled_caught:
            raise trio.ClosedResourceError  # a body that never arrives: cut the client off
        return None

    def _count(self, status: int) -> None:
        self.http_errors[status] += 1

    # -- routes ----------------------------------------------------------------

    async def route(
        self, method: str, target: Target, request: h11.Request | None = None, body: bytes = b""
    ) -> Response:
        path = target.path
        camera_id, output = camera_path(path)
        known = path in STATIC_FILES or path in JSON_ROUTES or path == "/metrics" or output
        if not known and path != "/api/sessions":
            return error(404, "not_found", f"nothing at {path}")
        allowed = "POST" if output == "frames" or path == "/api/sessions" else "GET, HEAD"
        if method == "OPTIONS":
            return Response(204, headers=[("allow", f"{allowed}, OPTIONS")])
        if method not in allowed.split(", "):
            return error(405, "method_not_allowed", f"{method} is not allowed on {path}",
                         allow=allowed)  # fmt: skip
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
        if output == "websocket":
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
            now = time.monotonic()
            return json_response([c.summary(now) for c in self.hub.cameras.values()])
        if path == "/api/stats":
            return json_response(self.stats())
        if path in STATIC_FILES:
            return static(STATIC_FILES[path])
        return error(404, "not_found", f"nothing at {path}")

    def stats(self) -> dict[str, object]:
        now = time.monotonic()
        cameras = []
        for camera in self.hub.cameras.values():
            sent, dropped, sent_bytes = camera.delivery_totals()
            cameras.append({
                **camera.summary(now),
                "frames_sent": sent, "frames_dropped": dropped, "bytes_sent": sent_bytes,
                "subscribers": [s.stats(now) for s in camera.subscribers],
            })  # fmt: skip
        return {**self.health(), "cameras": cameras}

    def upload(self, camera_id: str, content_type: str, body: bytes) -> Response:
        """A frame POSTed by a producer: checked, then published like a worker's frame."""
        try:
            image = parse_upload(content_type, body)
        except UploadError as bad:
            return error(bad.status, bad.code, str(bad))
        camera = self.hub.cameras.get(camera_id)
        seq = camera.upload_seq if camera is not None else 0
        frame = Frame(camera_id, seq, time.time(), image.width, image.height, image.format,
                      image.data, time.monotonic())  # fmt: skip
        if not self.hub.publish(frame):
            return error(404, "unknown_camera", f"no camera {camera_id!r}")
        self.hub.cameras[camera_id].upload_seq = seq + 1
        return json_response({"camera": camera_id, "seq": seq, "width": image.width,
                              "height": image.height, "format": image.format}, 201)  # fmt: skip

    def create_session(self) -> Response:
        """An ad-hoc camera for an HTTP producer (seed 003's session)."""
        if not self.config.ingest.http_sessions:
            return error(403, "sessions_disabled", "ingest.http_sessions is off in the config")
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
        image = await trio.to_thread.run_sync(
            nodata.render, camera.info.name, *camera.size, camera.silent_for(now)
        )
        return Response(200, image, "image/jpeg", [("x-camera-online", "false")])

    def _stream_target(self, target: Target) -> tuple[str, float | None]:
        """The camera and fps cap an upgrade request asks for, or BadRequest."""
        camera_id, output = camera_path(target.path)
        if target.path == "/":
            camera_id = self.config.default_camera
            if camera_id is None:
                raise BadRequest(error(404, "no_camera", "no camera is configured"))
        elif output != "websocket":
            raise BadRequest(error(404, "not_found", f"no WebSocket endpoint at {target.path}"))
        if camera_id not in self.hub.cameras:
            raise BadRequest(error(404, "unknown_camera", f"no camera {camera_id!r}"))
        return camera_id, fps_cap(target)

    # -- MJPEG ---------------------------------------------------------------

    async def _mjpeg(self, stream: trio.SocketStream, camera_id: str, max_fps: float | None,
                     client: str, head_only: bool) -> None:  # fmt: skip
        """``multipart/x-mixed-replace`` until the client leaves: one shared, pre-built part
        per frame, through the same drop-oldest queue and send timeout as WebSocket."""
        with trio.move_on_after(self.config.server.send_timeout):
            await stream.send_all(MJPEG_HEAD)
        if head_only:
            return
        subscriber = self.hub.subscribe(camera_id, client, self.config.server.queue_depth, "mjpeg")
        log.info("client %s: watching camera %s over MJPEG", client, camera_id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_eof, stream, nursery.cancel_scope)
                await self._send_frames(stream.send_all, stream, subscriber, max_fps,
                                        Frame.mjpeg_part)  # fmt: skip
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, SubscriptionEnded):
            pass
        finally:
            self.hub.unsubscribe(subscriber)
            log.info("client %s: left camera %s (sent %d frames, dropped %d)", client,
                     camera_id, subscriber.sent, subscriber.dropped)  # fmt: skip

    # -- WebSocket camera streams -------------------------------------------

    async def _websocket(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, client: str
    ) -> None:
        try:
            camera_id, max_fps = self._stream_target(parse_target(request.target))
        except BadRequest as bad:
            self._count(bad.response.status)
            await self._send(stream, conn, bad.response)
            return
        raw = request_bytes(request, conn.trailing_data[0])
        async with trio.open_nursery() as nursery:
            ws_request = ws = None
            with trio.move_on_after(self.config.server.header_timeout):
                ws_request = await wrap_server_stream(
                    nursery,
                    ReplayStream(stream, raw),
                    message_queue_size=1,
                    max_message_size=MAX_INCOMING_WS_MESSAGE,
                )
                ws = await ws_request.accept()
            if ws_request is None or ws is None:  # handshake timed out
                nursery.cancel_scope.cancel()
                return
            subscriber = self.hub.subscribe(camera_id, client, self.config.server.queue_depth)
            cap = f" (at most {max_fps:g} fps)" if max_fps else ""
            log.info("client %s: watching camera %s over WebSocket%s", client, camera_id, cap)
            try:
                await self._stream_frames(ws, subscriber, max_fps)
            finally:
                self.hub.unsubscribe(subscriber)
                log.info(
                    "client %s: left camera %s (sent %d frames, dropped %d)",
                    client,
                    camera_id,
                    subscriber.sent,
                    subscriber.dropped,
                )
                nursery.cancel_scope.cancel()

    async def _stream_frames(
        self, ws: WebSocketConnection, subscriber: Subscriber, max_fps: float | None
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
            try:
                await self._send_frames(
                    functools.partial(send_prebuilt, ws), ws._stream, subscriber, max_fps,
                    Frame.websocket_message,
                )  # fmt: skip
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except SubscriptionEnded:
                await close_going_away(ws)
            except trio.Cancelled:
                if ws.closed is None:  # we are shutting down, not the client leaving
                    await close_going_away(ws)
                raise
            nursery.cancel_scope.cancel()

    async def _send_frames(
        self,
        write: Callable[[bytes], Awaitable[None]],
        stream: trio.abc.Stream,
        subscriber: Subscriber,
        max_fps: float | None,
        message: Callable[[Frame], bytes],
    ) -> None:
        """Feed one client from its queue; on a send timeout abort ``stream`` and return."""
        send_timeout = self.config.server.send_timeout
        interval = 1 / max_fps if max_fps else 0.0
        next_due = 0.0
        while True:
            if interval:
                await trio.sleep_until(next_due)
            frame = await subscriber.next_frame(newest=bool(interval))
            next_due = max(next_due + interval, trio.current_time())
            with trio.move_on_after(send_timeout) as timer:
                await write(message(frame))
            if timer.cancelled_caught:
                # Part of a frame may be on the wire: the connection cannot be reused.
                self.slow_disconnects += 1
                log.warning(
                    "client %s: camera %s: took no frame within %.1f s; disconnected "
                    "(sent %d, dropped %d)",
                    subscriber.client,
                    subscriber.camera.id,
                    send_timeout,
                    subscriber.sent,
                    subscriber.dropped,
                )
                await trio.aclose_forcefully(stream)
                return
            subscriber.delivered(frame)


async def _until_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Read (and ignore) what a viewer sends until it closes, then stop its stream."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        scope.cancel()


async def _until_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Ignore what an MJPEG client sends; when it closes, stop its stream."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


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
    data = resources.files("broker").joinpath("static", name).read_bytes()
    suffix = name[name.rfind(".") :]
    return Response(200, data, STATIC_TYPES[suffix])
