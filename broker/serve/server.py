"""One TCP port for HTTP and WebSocket: the connection loop.

Every connection is read with h11; each request is parsed once into a route
(`broker.serve.router.parse`) and authorized (`Router.authorize`) before anything else.
Then it goes to its answer: plain requests to `broker.serve.handlers`, MJPEG to
`broker.serve.mjpeg`, a WebSocket upgrade for one camera to `broker.serve.websocket` and
one on ``/ws`` to `broker.serve.wsapi`. Upgrades are handed to trio-websocket (see
`broker.serve.wsframes`). Each connection has its own task and nursery; nothing a client
does, or fails to do, can hold another client up.

Kept whole past 400 lines: it is one concern, a connection from its first byte to the
hand-over of an upgrade, with its timeouts and error boundaries side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from broker.config import Config
from broker.core.hub import Hub
from broker.ingest.uploads import body_limit
from broker.serve import mjpeg, websocket
from broker.serve.access import Access, Grant
from broker.serve.delivery import Delivery
from broker.serve.derive import Deriver
from broker.serve.handlers import Handlers
from broker.serve.http import Response, error, h11_response, header, protocol_problem
from broker.serve.router import BadRequest, CommandRate, Kind, Route, Router, fps_cap, parse
from broker.serve.tls import Certificates, Handshakes
from broker.serve.views import Views
from broker.serve.wsapi import MAX_MESSAGE as MAX_MUX_MESSAGE
from broker.serve.wsapi import WsApi
from broker.serve.wsframes import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    InboundFrames,
    ReplayStream,
    close_with,
    handshake_problem,
    is_websocket_upgrade,
    linger,
    request_bytes,
)
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle

if TYPE_CHECKING:
    from broker.analytics import Analytics
    from broker.control import Control

log = logging.getLogger("broker.server")

MAX_REQUEST_HEAD = 16 * 1024
MAX_INCOMING_WS_MESSAGE = 64 * 1024  # what a viewer of one camera may send (it is ignored)
# Bytes the kernel may hold unsent per client. Without a bound a slow reader sits
# seconds behind on frames the kernel already accepted, whatever our queue drops.
NOTSENT_LOWAT = 64 * 1024
CORS_METHODS = "GET, HEAD, POST, PATCH, OPTIONS"
MIN_TOKEN_LENGTH = 16  # shorter tokens are warned about at start: easy to guess
# A client leaving, at any point: not a fault of ours.
CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed)
INTERNAL_ERROR_MESSAGE = "the broker failed on this request"
TOKEN_RECHECK = 2.0  # seconds between checks that a stream's signed token is still valid


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A checked WebSocket upgrade: what serving it needs, and nothing of HTTP."""

    head: bytes  # the request head as received, replayed to trio-websocket
    trailing: bytes  # what the client sent after it (frames), checked on its way
    grant: Grant
    multiplexed: bool  # /ws, else one camera
    camera: str
    max_fps: float | None
    token: str = ""  # a signed token's: checked again while it is served
    browser: bool = False  # ?format=jpeg: JPEGs only, derived for raw formats

    @property
    def where(self) -> str:
        """Where its faults are counted."""
        return "ws_api" if self.multiplexed else "websocket"


def browser_format(route: Route) -> bool:
    """``?format=jpeg`` on a camera WebSocket: images a browser shows (the viewer page),
    JPEGs derived from each frame for a camera of a raw format; `BadRequest` for any
    other value (the camera's own format is what a WebSocket sends without it)."""
    wanted = route.param("format")
    if wanted is None:
        return False
    if wanted != "jpeg":
        raise BadRequest(
            error("bad_query", f"format may only be jpeg (a browser image), got {wanted[:20]!r}")
        )
    return True


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
        config_file: str = "",
        analytics: Analytics | None = None,
    ) -> None:
        """``config_file``: the file ``config`` was loaded from, if any; its
        ``security.revoked`` is then re-read when it changes."""
        self.config = config
        self.faults = faults if faults is not None else Faults()
        self.hub = hub
        self.http_errors: Counter[int] = Counter()
        self.port = 0
        self._complaints = LogThrottle(log)
        self._app_health = health
        self.access = Access(config.tokens, config.security, config_file)
        self.router = Router(config, self.access, hub)
        commands = CommandRate(config.control.command_rate)  # HTTP and /ws alike
        self.delivery = Delivery(hub, config.server)
        self.views = Views(config, hub, self.health, control, analytics)
        # The JPEGs of raw-format cameras for browser outputs; the broker starts its task.
        self.deriver = Deriver(hub, hub.errors, self.faults)
        self.handlers = Handlers(
            config, hub, self.views, metrics, control, self.access, commands, self.deriver
        )
        self.wsapi = WsApi(config, hub, self.delivery, self.views, control, commands, self.faults)
        # With TLS every connection is wrapped before a byte of HTTP is read (serve.tls).
        tls = config.server
        self.certificates = Certificates(tls.tls_cert, tls.tls_key) if tls.tls_cert else None
        self.tls = Handshakes(self.certificates, tls.header_timeout) if self.certificates else None
        # Its per-message debug lines would let any client flood a debug log.
        library = logging.getLogger("trio-websocket")
        if library.level == logging.NOTSET:
            library.setLevel(logging.INFO)

    @property
    def slow_disconnects(self) -> int:
        """Clients cut off because they took no frame within ``server.send_timeout``."""
        return self.delivery.slow_disconnects

    def health(self) -> dict[str, object]:
        """The application's health plus the server's own counters."""
        return {
            **self._app_health(),
            "ws_connections": self.wsapi.connections,  # on /ws
            "ws_errors": dict(self.wsapi.errors),  # error messages sent on /ws, by code
            **({"tls": self.tls.stats.as_dict()} if self.tls else {}),
            # JPEGs derived from frames of raw formats for browser outputs: one per frame
            # at most, however many watch (broker.serve.derive).
            "derived_jpegs": self.deriver.derived,
        }

    async def listen(self) -> list[trio.SocketListener]:
        """Bind ``server.listen``; raises OSError (port in use, say) before anything starts."""
        server = self.config.server
        listeners = await trio.open_tcp_listeners(server.port, host=server.host or None)
        self.port = listeners[0].socket.getsockname()[1]
        if self.tls is not None:
            self.tls.port = self.port
        scheme = "https" if self.tls else "http"
        log.info("listening on %s://%s:%d/", scheme, server.host, self.port)
        if self.access.open:
            log.warning("no [[tokens]] configured: every client may watch and control every camera")
        else:
            signed = self.access.signed
            kinds = f" and signed tokens ({', '.join(signed.algorithms)})" if signed else ""
            log.info(
                "%d static token(s)%s configured: every request needs one",
                len(self.config.tokens),
                kinds,
            )
        for token in self.config.tokens:
            if len(token.token) < MIN_TOKEN_LENGTH:
                log.warning(
                    "%s is shorter than %d characters: easy to guess; use a long random one",
                    token.label,
                    MIN_TOKEN_LENGTH,
                )
        return listeners

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        """Serve HTTP and WebSocket on ``listeners`` until cancelled."""
        await trio.serve_listeners(self.handle_connection, listeners)

    # -- connections ---------------------------------------------------------

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one connection (over TLS when configured). Its error boundary: nothing
        raised here reaches the listener; an unexpected exception is counted in
        ``faults`` (answered, where an answer is still possible, further down) and the
        connection closed."""
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            host, port = stream.socket.getpeername()[:2]
        except OSError:  # the client is already gone
            await trio.aclose_forcefully(stream)
            return
        client = f"{host}:{port}"
        where = "http"
        transport: trio.abc.Stream = stream
        try:
            if self.tls is not None:
                where = "tls"
                secured = await self.tls.secure(stream, client)
                if secured is None:  # refused, counted and logged
                    return
                transport, where = secured, "http"
            # The HTTP state (h11's connection, the request) lives only in _serve_http's
            # frame, so a long-lived WebSocket does not keep it: a few KB per viewer.
            upgrade = await self._serve_http(transport, client)
            if upgrade is not None:
                where = upgrade.where
                await self._websocket(transport, upgrade, client)
        except* CLIENT_GONE:
            pass
        except* Exception as group:
            self._fault(where, group)
        finally:
            await trio.aclose_forcefully(transport)

    def _fault(self, where: str, group: BaseExceptionGroup) -> None:
        leaves = _leaves(group)
        self.faults.record(where, leaves[0] if len(leaves) == 1 else group)

    async def _serve_http(self, stream: trio.abc.Stream, client: str) -> Upgrade | None:
        """Answer requests until the connection ends, or return an accepted upgrade."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            return await self._serve_requests(stream, conn, client)
        except* CLIENT_GONE:
            raise
        except* Exception as group:  # a bug: one 500 and this connection, not the server
            self._fault("http", group)
            if conn.our_state is h11.SEND_RESPONSE:  # nothing of a response is out yet
                self._count(500)
                with contextlib.suppress(*CLIENT_GONE, h11.LocalProtocolError):
                    response = error("internal_error", INTERNAL_ERROR_MESSAGE)
                    await self._send(stream, conn, response)
        return None

    async def _serve_requests(
        self, stream: trio.abc.Stream, conn: h11.Connection, client: str
    ) -> Upgrade | None:
        request: h11.Request | None = None
        try:
            while True:
                request = None  # this cycle's (the last one was answered)
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
            # Never the client's bytes: a request line may carry ?token=...
            problem = protocol_problem(exc)
            status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
            self._count(status)
            self._complaints.warning(
                str(status), "client %s: malformed request: %s", client, problem
            )
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                # The request's head may be in (its body was malformed): a HEAD answer
                # has no body, and h11 refuses to send one.
                head_only = request is not None and request.method == b"HEAD"
                response = error("bad_request", problem, status=status)
                await self._send(stream, conn, response, head_only=head_only)
            return None

    async def _receive_request(
        self, stream: trio.abc.Stream, conn: h11.Connection, client: str
    ) -> h11.Request | None:
        """The next request head, or None when the client closed or took too long."""
        with trio.move_on_after(self.config.server.header_timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
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
        stream: trio.abc.Stream,
        conn: h11.Connection,
        response: Response,
        head_only: bool = False,
        origin: h11.Request | None = None,
    ) -> None:
        if origin is not None:
            response.headers.extend(self._cors(origin))
        head, body = h11_response(response, head_only=head_only)
        with trio.move_on_after(self.config.server.send_timeout) as timer:
            data = conn.send(head)
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
        if timer.cancelled_caught:
            raise trio.ClosedResourceError  # part of a response may be out: close

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
            headers += [
                ("access-control-allow-methods", CORS_METHODS),
                ("access-control-allow-headers", "content-type, authorization, x-request-id"),
                ("access-control-max-age", "600"),
            ]
        return headers

    async def _answer(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, client: str
    ) -> None:
        method = request.method.decode("ascii", "replace")
        route = parse(request.target)
        grant, client_key = self._authorize(method, route, request, client)
        # Only uploads carry a body; anything else may bring a small one, drained.
        refused = isinstance(grant, Response)
        limit = (
            MAX_REQUEST_HEAD
            if refused or route.kind is not Kind.FRAMES
            else body_limit(self.config, route.camera, header(request, b"content-type"))
        )
        body = await self._read_body(stream, conn, request, limit)
        if body is None:
            response = error("too_large", f"the request body exceeds {limit} bytes")
            self._count(413)
            await self._send(stream, conn, response, head_only=method == "HEAD", origin=request)
            raise trio.ClosedResourceError  # the rest of the body is unread: close
        if isinstance(grant, Response):
            response = grant
        elif (
            route.kind is Kind.MJPEG
            and method in ("GET", "HEAD")
            and (route.camera in self.hub.cameras)
        ):
            try:
                max_fps = fps_cap(route)
            except BadRequest as bad:
                response = bad.response
            else:
                async with trio.open_nursery() as nursery:
                    if grant.expires is not None:  # a signed token's key is the token
                        nursery.start_soon(self._end_mjpeg, client_key, grant, client, nursery)
                    await self._mjpeg(stream, route.camera, max_fps, client, method == "HEAD")
                    nursery.cancel_scope.cancel()
                raise trio.ClosedResourceError  # the stream is over: close the connection
        else:
            response = await self.handlers.answer(method, route, request, body, grant, client_key)
        if response.status >= 400:
            self._count(response.status)
        await self._send(stream, conn, response, head_only=method == "HEAD", origin=request)

    def _authorize(
        self, method: str, route: Route, request: h11.Request, client: str
    ) -> tuple[Grant | Response, str]:
        return self.router.authorize(
            method,
            route,
            header(request, b"authorization"),
            client,
            origin=header(request, b"origin"),
            host=header(request, b"host"),
        )

    async def _mjpeg(
        self,
        stream: trio.abc.Stream,
        camera_id: str,
        max_fps: float | None,
        client: str,
        head_only: bool,
    ) -> None:
        """An MJPEG stream; its head is out, so a fault can only end it, not answer 500."""
        try:
            await mjpeg.serve(self.delivery, stream, camera_id, max_fps, client, head_only)
        except* CLIENT_GONE:
            pass
        except* Exception as group:
            self._fault("http", group)

    async def _read_body(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, limit: int
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
                    conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
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
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, client: str
    ) -> Upgrade | None:
        """The upgrade to serve, or None after refusing it at the handshake, before
        accepting: 400/426 for a malformed upgrade, then 429/401/403/404/400."""
        route = parse(request.target)
        camera_id, max_fps, client_key, browser = "", None, "", False
        try:
            problem = handshake_problem(request)
            if problem is not None:
                raise BadRequest(problem)
            grant, client_key = self._authorize("GET", route, request, client)
            if isinstance(grant, Response):
                raise BadRequest(grant)
            if route.kind is not Kind.MUX:
                camera_id, max_fps = self.router.stream_target(route, grant)
                browser = browser_format(route)
        except BadRequest as bad:
            self._count(bad.response.status)
            if bad.response.status in (400, 426):
                self._complaints.warning(
                    "bad_handshake",
                    "client %s: WebSocket upgrade refused: %s",
                    client,
                    _message(bad.response),
                )
            # A HEAD request may carry upgrade headers too: its refusal has no body.
            await self._send(stream, conn, bad.response, head_only=request.method == b"HEAD")
            return None
        return Upgrade(
            request_bytes(request, b""),
            conn.trailing_data[0],
            grant,
            route.kind is Kind.MUX,
            camera_id,
            max_fps,
            client_key if grant.expires is not None else "",  # a signed token's key: itself
            browser,
        )

    async def _websocket(self, stream: trio.abc.Stream, upgrade: Upgrade, client: str) -> None:
        """Serve ``/ws`` or one camera's stream over an accepted upgrade. A fault while
        serving it closes it with 1011; a protocol violation by the client with the close
        frame `ReplayStream` has sent, after letting the client read it."""
        limit = MAX_MUX_MESSAGE if upgrade.multiplexed else MAX_INCOMING_WS_MESSAGE
        replay = ReplayStream(stream, upgrade.head, InboundFrames(limit), upgrade.trailing)
        async with trio.open_nursery() as nursery:
            try:
                ws = await self._accept(nursery, replay, limit)
                if ws is not None:  # else the client left, or the handshake timed out
                    await self._serve_websocket(ws, upgrade, client)
            finally:
                nursery.cancel_scope.cancel()
        if replay.violation is not None:
            await linger(stream)

    async def _serve_websocket(
        self, ws: WebSocketConnection, upgrade: Upgrade, client: str
    ) -> None:
        """Serve it until the client leaves, or its signed token expires or is revoked
        (then close with 1008, policy violation: a panel reconnects and is refused)."""
        try:
            async with trio.open_nursery() as nursery:
                if upgrade.grant.expires is not None:
                    nursery.start_soon(self._expire, ws, upgrade, client, nursery)
                if upgrade.multiplexed:
                    await self.wsapi.serve(ws, upgrade.grant, client)
                else:
                    await websocket.serve(
                        self.delivery,
                        ws,
                        upgrade.camera,
                        upgrade.max_fps,
                        client,
                        upgrade.browser,
                    )
                nursery.cancel_scope.cancel()
        except* CLIENT_GONE:
            pass
        except* Exception as group:
            self._fault(upgrade.where, group)
            await close_with(ws, INTERNAL_ERROR)

    async def _expire(
        self, ws: WebSocketConnection, upgrade: Upgrade, client: str, nursery: trio.Nursery
    ) -> None:
        """When its signed token expires or is revoked: the close frame (1008) first,
        then the end of serving."""
        why = await self._until_invalid(upgrade.token, upgrade.grant)
        log.info("client %s: its token %s; WebSocket closed", client, why)
        await close_with(ws, POLICY_VIOLATION)
        nursery.cancel_scope.cancel()

    async def _end_mjpeg(
        self, token: str, grant: Grant, client: str, nursery: trio.Nursery
    ) -> None:
        why = await self._until_invalid(token, grant)
        log.info("client %s: its token %s; MJPEG stream ended", client, why)
        nursery.cancel_scope.cancel()

    async def _until_invalid(self, token: str, grant: Grant) -> str:
        """Return when a signed token expires (its ``exp`` plus the clock skew), or stops
        being valid (its ``jti`` revoked, the secret rotated), checked every
        `TOKEN_RECHECK` seconds; says which."""
        deadline = trio.current_time() + self._time_left(grant)
        while (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(TOKEN_RECHECK, left))
            if trio.current_time() < deadline and not self.access.valid(token):
                return "is no longer valid (revoked, or its key changed)"
        return "expired"

    def _time_left(self, grant: Grant) -> float:
        """Seconds until a signed token's ``exp`` (plus the clock skew) ends what it
        opened; infinite for other grants."""
        if grant.expires is None:
            return math.inf
        return max(0.0, grant.expires + self.config.security.clock_skew - time.time())

    async def _accept(
        self, nursery: trio.Nursery, replay: ReplayStream, limit: int
    ) -> WebSocketConnection | None:
        """Hand the upgrade to trio-websocket; None when the client leaves during the
        handshake (trio-websocket raises ConnectionClosed: not a fault) or does not
        finish it within ``server.header_timeout``."""
        with trio.move_on_after(self.config.server.header_timeout):
            try:
                ws_request = await wrap_server_stream(
                    nursery, replay, message_queue_size=1, max_message_size=limit
                )
                ws = await ws_request.accept()
            except ConnectionClosed:
                return None
            replay.opened(ws)
            return ws
        return None


def _message(response: Response) -> str:
    return str(json.loads(response.body).get("message", ""))


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
