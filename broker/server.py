"""One TCP port for HTTP and WebSocket.

Every connection is read with h11 and every request is checked against the tokens
(`broker.auth`) before anything else. Plain requests are answered by `broker.routes`;
MJPEG and a WebSocket upgrade for one camera are fed by `broker.streams`; an upgrade
on ``/ws`` is the multiplexed protocol of `broker.wsapi`. Upgrades are handed to
trio-websocket (see `broker.wsframes`). Each connection has its own task and nursery;
nothing a client does, or fails to do, can hold another client up.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
import trio
from trio_websocket import WebSocketConnection, wrap_server_stream

from broker.auth import Access, Grant, request_token
from broker.boundary import Faults
from broker.config import Config
from broker.http import Response, Target, error, h11_response, header, parse_target
from broker.hub import Hub
from broker.ratelimit import RateLimitedLog
from broker.routes import BadRequest, Routes, camera_path, forbidden_camera, fps_cap
from broker.streams import Streams
from broker.wsapi import MAX_MESSAGE as MAX_MUX_MESSAGE
from broker.wsapi import WsApi
from broker.wsframes import ReplayStream, is_websocket_upgrade, request_bytes

if TYPE_CHECKING:
    from broker.control import Control

log = logging.getLogger("broker.server")

MAX_REQUEST_HEAD = 16 * 1024
MAX_INCOMING_WS_MESSAGE = 64 * 1024  # what a viewer of one camera may send (it is ignored)
# Bytes the kernel may hold unsent per client. Without a bound a slow reader sits
# seconds behind on frames the kernel already accepted, whatever our queue drops.
NOTSENT_LOWAT = 64 * 1024
CORS_METHODS = "GET, HEAD, POST, PATCH, OPTIONS"


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A checked WebSocket upgrade: what serving it needs, and nothing of HTTP."""

    raw: bytes  # the request as received, replayed to trio-websocket
    grant: Grant
    multiplexed: bool  # /ws, else one camera
    camera: str
    max_fps: float | None


class Server:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        health: Callable[[], dict[str, object]],
        metrics: Callable[[], bytes] | None = None,
        *,
        control: Control | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.config = config
        self.faults = faults if faults is not None else Faults()
        self.hub = hub
        self.http_errors: Counter[int] = Counter()
        self.started_at = time.monotonic()
        self.port = 0
        self._complaints = RateLimitedLog(log)
        self._app_health = health
        self.access = Access(config.tokens)
        self.streams = Streams(hub, config.server)
        self.routes = Routes(config, hub, self.health, metrics, control, self.access)
        self.wsapi = WsApi(config, hub, self.streams, self.routes, control)

    @property
    def slow_disconnects(self) -> int:
        """Clients cut off because they took no frame within ``server.send_timeout``."""
        return self.streams.slow_disconnects

    def health(self) -> dict[str, object]:
        """The application's health plus the server's own counters."""
        return {
            **self._app_health(),
            "ws_connections": self.wsapi.connections,  # on /ws
            "ws_errors": dict(self.wsapi.errors),  # error messages sent on /ws, by code
        }

    async def listen(self) -> list[trio.SocketListener]:
        """Bind ``server.listen``; raises OSError (port in use, say) before anything starts."""
        server = self.config.server
        listeners = await trio.open_tcp_listeners(server.port, host=server.host or None)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("listening on http://%s:%d/", server.host, self.port)
        if self.access.open:
            log.warning("no [[tokens]] configured: every client may watch and control "
                        "every camera")  # fmt: skip
        else:
            log.info("%d token(s) configured: every request needs one", len(self.config.tokens))
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
        try:
            # The HTTP state (h11's connection, the request) lives only in _serve_http's
            # frame, so a long-lived WebSocket does not keep it: a few KB per viewer.
            upgrade = await self._serve_http(stream, client)
            if upgrade is not None:
                await self._websocket(stream, upgrade, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_http(self, stream: trio.SocketStream, client: str) -> Upgrade | None:
        """Answer requests until the connection ends, or return an accepted upgrade."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                request = await self._receive_request(stream, conn, client)
                if request is None:
                    return None
                if is_websocket_upgrade(request):
                    return await self._check_upgrade(stream, conn, request, client)
                await self._answer(stream, conn, request, client)
                if conn.our_state is h11.MUST_CLOSE:
                    return None
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            self._count(400)
            self._complaints.warning("400", "client %s: malformed request: %s", client, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(stream, conn, error(400, "bad_request", str(exc)))
            return None

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
            headers += [("access-control-allow-methods", CORS_METHODS),
                        ("access-control-allow-headers",
                         "content-type, authorization, x-request-id"),
                        ("access-control-max-age", "600")]  # fmt: skip
        return headers

    def _authorize(
        self, method: str, target: Target, request: h11.Request, client: str
    ) -> tuple[Grant | Response, str]:
        """The caller's grant (or the 401/403 refusal) and the key that its commands are
        rate-limited by: its token, or its address when no tokens are configured."""
        token = request_token(header(request, b"authorization"), target.param("token"))
        grant = self.routes.authorize(method, target, token)
        if isinstance(grant, Response) and grant.status == 401:
            self._complaints.warning("401", "client %s: %s token for %s %s", client,
                                     "invalid" if token else "no", method, target.path)  # fmt: skip
        key = token if token and not self.access.open else client.rpartition(":")[0]
        return grant, key

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, client: str
    ) -> None:
        method = request.method.decode("ascii", "replace")
        target = parse_target(request.target)
        camera_id, output = camera_path(target.path)
        grant, client_key = self._authorize(method, target, request, client)
        # Only uploads carry a body; anything else may bring a small one, drained.
        refused = isinstance(grant, Response)
        limit = MAX_REQUEST_HEAD if refused or output != "frames" else (
            self.config.ingest.max_frame_bytes)  # fmt: skip
        body = await self._read_body(stream, conn, request, limit)
        if body is None:
            response = error(413, "too_large", f"the request body exceeds {limit} bytes")
            self._count(413)
            await self._send(stream, conn, response, origin=request)
            raise trio.ClosedResourceError  # the rest of the body is unread: close
        if isinstance(grant, Response):
            response = grant
        elif output == "mjpeg" and method in ("GET", "HEAD") and camera_id in self.hub.cameras:
            try:
                max_fps = fps_cap(target)
            except BadRequest as bad:
                response = bad.response
            else:
                await self.streams.mjpeg(stream, camera_id, max_fps, client,
                                         head_only=method == "HEAD")  # fmt: skip
                raise trio.ClosedResourceError  # the stream is over: close the connection
        else:
            response = await self.routes.route(method, target, request, body, grant, client_key)
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

    # -- WebSocket upgrades --------------------------------------------------------

    async def _check_upgrade(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, client: str
    ) -> Upgrade | None:
        """The upgrade to serve, or None after refusing it (401/403/404/400 at the
        handshake, before accepting)."""
        target = parse_target(request.target)
        grant, _ = self._authorize("GET", target, request, client)
        camera_id, max_fps = "", None
        try:
            if isinstance(grant, Response):
                raise BadRequest(grant)
            if target.path != "/ws":
                camera_id, max_fps = self._camera_target(target, grant)
        except BadRequest as bad:
            self._count(bad.response.status)
            await self._send(stream, conn, bad.response)
            return None
        assert isinstance(grant, Grant)
        raw = request_bytes(request, conn.trailing_data[0])
        return Upgrade(raw, grant, target.path == "/ws", camera_id, max_fps)

    async def _websocket(self, stream: trio.SocketStream, upgrade: Upgrade, client: str) -> None:
        """Serve ``/ws`` or one camera's stream over an accepted upgrade."""
        limit = MAX_MUX_MESSAGE if upgrade.multiplexed else MAX_INCOMING_WS_MESSAGE
        async with trio.open_nursery() as nursery:
            ws = await self._accept(nursery, stream, upgrade.raw, limit)
            if ws is None:  # handshake timed out
                nursery.cancel_scope.cancel()
                return
            try:
                if upgrade.multiplexed:
                    await self.wsapi.serve(ws, upgrade.grant, client)
                else:
                    await self.streams.camera_websocket(ws, upgrade.camera, upgrade.max_fps,
                                                        client)  # fmt: skip
            finally:
                nursery.cancel_scope.cancel()

    def _camera_target(self, target: Target, grant: Grant) -> tuple[str, float | None]:
        """The camera and fps cap of a camera WebSocket upgrade, or BadRequest (a 403
        before a 404, so a limited token learns nothing of cameras it may not see)."""
        named, _ = camera_path(target.path)
        if named and not grant.can_watch(named):
            raise BadRequest(forbidden_camera(named))
        camera_id, max_fps = self.routes.stream_target(target)
        if not grant.can_watch(camera_id):
            raise BadRequest(forbidden_camera(camera_id))
        return camera_id, max_fps

    async def _accept(
        self, nursery: trio.Nursery, stream: trio.SocketStream, raw: bytes, limit: int
    ) -> WebSocketConnection | None:
        """Hand the upgrade to trio-websocket; None when the handshake does not finish
        within ``server.header_timeout``."""
        with trio.move_on_after(self.config.server.header_timeout):
            ws_request = await wrap_server_stream(
                nursery, ReplayStream(stream, raw), message_queue_size=1, max_message_size=limit
            )
            return await ws_request.accept()
        return None
