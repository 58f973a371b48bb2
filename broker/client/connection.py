"""The WebSocket connection to the broker, made again when it drops.

One task (`Link.run`) owns it: it connects, hands every message to the client, and when
the connection ends reconnects with exponential backoff and jitter (`Backoff`), until
the client closes; a 401/403 at the handshake is never retried. A silent connection is
checked with a WebSocket ping (``keepalive``). What the messages mean is the client's
business (`broker.client.api`), told through the callbacks `Link` is made with.

Only trio-websocket's public API is used: the client opens the TCP (or TLS) stream
itself and hands it to ``wrap_client_stream``, so it can abort that stream when a send
is cut short or the broker stops answering.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from broker.client.errors import AuthError, BrokerError, ConnectError, ConnectionLost
from broker.support.backoff import Backoff

log = logging.getLogger("broker.client")

NORMAL_CLOSURE = 1000
# Frames may be as large as the broker accepts (ingest.max_frame_bytes, up to 256 MiB);
# a smaller cap here would close the connection (1009) on every such frame.
MAX_MESSAGE_SIZE = 256 * 1024 * 1024 + 64 * 1024
JITTER = 0.5  # each reconnection delay is drawn from half of it to all of it

E = TypeVar("E", bound=BaseException)
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]  # what the WebSocket runs on


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a ``ws://`` or ``wss://`` URL leads."""

    host: str
    port: int
    resource: str  # path and query
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        tls = parts.scheme == "wss"
        default = 443 if tls else 80
        port = parts.port or default
        host_header = parts.netloc.rpartition("@")[2]
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, resource, host_header, tls)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How the connection is made and kept; `broker.client.Client` documents each."""

    reconnect: bool = True
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    keepalive: float | None = 15.0
    pong_timeout: float = 10.0  # the client's request_timeout
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    max_message_size: int = MAX_MESSAGE_SIZE
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class LinkEvents:
    """What the link tells the client. None of them may block."""

    opened: Callable[[trio.Nursery, bool], None]  # (the connection's nursery, a reconnect?)
    message: Callable[[str | bytes], None]
    dropped: Callable[[], None]  # as a connection ends, however it ends
    closed: Callable[[int | None], None]  # after it ended by itself, with the close code
    gave_up: Callable[[BrokerError], None]  # no more connections will be made


class Link:
    """A connection to one broker's ``/ws``, re-made when it drops."""

    def __init__(
        self, url: str, token: str | None, options: LinkOptions, events: LinkEvents
    ) -> None:
        self.url = url
        self.options = options
        self.closing = False
        self.failure: BrokerError | None = None  # why the link gave up, if it did
        self._endpoint = Endpoint.parse(url)
        self._headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._events = events
        self._ws: WebSocketConnection | None = None
        self._stream: Stream | None = None
        self._last_received = 0.0  # trio.current_time() of the last message

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def send(self, message: str) -> None:
        """Send one text message; `ConnectionLost` (or why the link gave up) when there is
        no connection or it closes meanwhile."""
        ws, stream = self._ws, self._stream
        if ws is None or stream is None:
            raise self.failure or ConnectionLost("not connected to the broker (reconnecting)")
        sending = True
        try:
            await ws.send_message(message)
            sending = False
        except ConnectionClosed:
            sending = False  # nothing to protect on a closed connection
            raise ConnectionLost() from None
        finally:
            if sending:
                # Cancelled mid-send: part of a message may be on the wire, so this
                # connection cannot go on; the client reconnects.
                await trio.aclose_forcefully(stream)

    async def close(self) -> None:
        """Close with 1000 (normal closure), bounded by ``close_timeout`` even if cancelled."""
        self.closing = True
        ws = self._ws
        if ws is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout):
                await ws.aclose(NORMAL_CLOSURE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (errors of this first attempt go to the caller), then serve and
        reconnect until closed or refused."""
        await self._connection(task_status, resume=False)
        options = self.options
        backoff = Backoff(options.backoff_initial, options.backoff_max, jitter=JITTER)
        while not self.closing:
            if not options.reconnect:
                self._give_up(ConnectionLost("the connection to the broker ended"))
                return
            await trio.sleep(backoff.next())
            try:
                await self._connection(trio.TASK_STATUS_IGNORED, resume=True)
            except AuthError as exc:
                log.error("reconnect to %s refused: %s", self.url, exc)
                self._give_up(exc)
                return
            except ConnectError as exc:
                log.info(
                    "reconnect to %s failed (%s); next try within %.1f s",
                    self.url,
                    exc,
                    backoff.delay,
                )
            else:
                backoff.reset()

    def _give_up(self, reason: BrokerError) -> None:
        self.failure = reason
        self._events.gave_up(reason)

    async def _connection(self, task_status: trio.TaskStatus[None], resume: bool) -> None:
        """One connection: handshake, then serve until it ends. Raises ConnectError
        (AuthError on 401/403) when no connection was made."""
        stream = await self._open_stream()
        endpoint, options = self._endpoint, self.options
        failure: ConnectError | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws = None
                with trio.move_on_after(options.connect_timeout):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        endpoint.host_header,
                        endpoint.resource,
                        extra_headers=self._headers,
                        max_message_size=options.max_message_size,
                    )
                if ws is None:
                    failure = ConnectError(
                        f"{self.url}: no WebSocket handshake within {options.connect_timeout:g} s",
                        "timeout",
                    )
                    nursery.cancel_scope.cancel()
                else:
                    await self._serve(ws, stream, nursery, task_status, resume)
        except BaseExceptionGroup as group:
            rejected = _find(group, ConnectionRejected)
            if rejected is None:
                raise
            failure = _rejection(self.url, rejected)
        finally:
            # trio-websocket's client leaves its stream open when the server closes
            # first (or rejects the handshake): close it, or it leaks.
            await trio.aclose_forcefully(stream)
        if failure is not None:
            raise failure

    async def _open_stream(self) -> Stream:
        endpoint = self._endpoint
        try:
            with trio.fail_after(self.options.connect_timeout):
                if not endpoint.tls:
                    return await trio.open_tcp_stream(endpoint.host, endpoint.port)
                stream = await trio.open_ssl_over_tcp_stream(
                    endpoint.host,
                    endpoint.port,
                    https_compatible=True,
                    ssl_context=self.options.ssl_context or ssl.create_default_context(),
                )
                try:  # now: a certificate refused later would look like a silent broker
                    await stream.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                return stream
        except (OSError, trio.TooSlowError) as exc:
            reason = f"cannot reach {endpoint.address} ({_why(exc)})"
            raise ConnectError(f"cannot connect to {self.url}: {reason}", "unreachable") from exc
        except trio.BrokenResourceError as exc:  # the TLS handshake failed
            reason = f"TLS handshake with {endpoint.address} failed ({exc.__cause__ or exc})"
            raise ConnectError(f"cannot connect to {self.url}: {reason}", "unreachable") from exc

    async def _serve(
        self,
        ws: WebSocketConnection,
        stream: Stream,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[None],
        resume: bool,
    ) -> None:
        self._ws, self._stream = ws, stream
        if resume:
            log.info("reconnected to %s", self.url)
        task_status.started()
        self._events.opened(nursery, resume)
        if self.options.keepalive:
            nursery.start_soon(self._keep_alive, ws, stream, self.options.keepalive)
        try:
            await self._receive(ws)
            if self.closing:
                # `close` is in the close handshake, which needs the reader task (in
                # this nursery) alive until the broker answers; it cancels us after.
                await trio.sleep_forever()
        finally:
            self._ws = self._stream = None
            self._events.dropped()
            nursery.cancel_scope.cancel()
        code = ws.closed.code if ws.closed else None
        log.info("connection to %s ended (close code %s)", self.url, code)
        self._events.closed(code)

    async def _keep_alive(self, ws: WebSocketConnection, stream: Stream, keepalive: float) -> None:
        """A broker that hangs, or a network that silently drops the connection, sends
        no close: after ``keepalive`` seconds of silence, a WebSocket ping must bring a
        pong within ``pong_timeout``, or the connection is dropped (and re-made)."""
        wait = self.options.pong_timeout
        self._last_received = trio.current_time()
        while True:
            await trio.sleep_until(self._last_received + keepalive)
            if trio.current_time() - self._last_received < keepalive:
                continue  # a message came meanwhile
            with trio.move_on_after(wait) as timer:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if timer.cancelled_caught:
                log.warning(
                    "no pong from %s within %.1f s: dropping the connection", self.url, wait
                )
                await trio.aclose_forcefully(stream)
                return
            self._last_received = trio.current_time()

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            self._last_received = trio.current_time()
            self._events.message(message)


def _find(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``group`` (nested groups included), or None."""
    found: BaseException | None = group.subgroup(kind)
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found if isinstance(found, kind) else None


def _why(exc: BaseException) -> str:
    """Why a connection could not be opened, in a few words ("Connection refused")."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc.__cause__, BaseExceptionGroup):  # trio tried each address
        exc = _find(exc.__cause__, OSError) or exc
    if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _rejection(url: str, rejected: ConnectionRejected) -> ConnectError:
    status = rejected.status_code
    detail = ""
    try:
        body = json.loads(rejected.body or b"")
        detail = f": {body['message']}"
    except (ValueError, TypeError, KeyError):
        pass
    if status in (401, 403):
        reason = "missing or wrong token" if status == 401 else "the token may not do this"
        return AuthError(f"{url}: {status} {reason}{detail}", status)
    return ConnectError(
        f"{url}: the broker refused the WebSocket handshake with {status}{detail}", f"http_{status}"
    )
