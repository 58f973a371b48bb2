"""A Python client for the broker's multiplexed WebSocket, ``ws://HOST:8765/ws``.

    async with broker.client.connect("ws://host:8765/ws", token=...) as client:
        await client.subscribe("front", max_fps=5)
        async for frame in client.frames():
            ...
        result = await client.command("front", "update_settings", brightness=60)

Everything runs in the nursery that `connect` opens: one task owns the connection and
reads every message; requests are matched to their answers by ``request_id`` and are
bounded by a timeout; async handlers run as tasks of their own (at most
``max_handler_tasks`` at once), so a slow handler never holds up frames. When the
connection drops, the client reconnects with exponential backoff and jitter and sends
every active subscription again; a 401/403 at the handshake is never retried.

Frames wait in one drop-oldest queue per camera (``frame_queue`` deep, 8 by default):
a consumer slower than the camera gets fewer, newer frames, and the client counts what
it dropped. The wire format is in docs/protocol.md; usage in docs/client.md.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import random
import ssl
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection
from trio_websocket import wrap_client_stream as _wrap_client_stream

from broker.protocol import mux
from broker.protocol.results import CommandResult
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.client")

Message = dict[str, Any]
Handler = Callable[[Any], Any]  # sync, or returning an awaitable

NORMAL_CLOSURE = 1000
# Frames may be as large as the broker accepts (ingest.max_frame_bytes, up to 256 MiB);
# a smaller cap here would close the connection (1009) on every such frame.
MAX_MESSAGE_SIZE = 256 * 1024 * 1024 + 64 * 1024


# -- errors ------------------------------------------------------------------------


class BrokerError(Exception):
    """The broker refused a request (an ``error`` message), or the client could not
    complete one. ``code`` is the broker's machine code, or the client's own."""

    def __init__(
        self,
        message: str,
        code: str = "error",
        request_id: str | None = None,
        reply: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.reply = reply

    @classmethod
    def from_reply(cls, reply: Message) -> BrokerError:
        rid = reply.get("request_id")
        return cls(
            str(reply.get("message", "")),
            str(reply.get("code", "error")),
            None if rid is None else str(rid),
            reply,
        )

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectError(BrokerError):
    """No connection could be made (refused, unreachable, no handshake, refused token)."""


class AuthError(ConnectError):
    """The broker refused the token at the handshake (HTTP 401 or 403); never retried."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, "unauthorized" if status == 401 else "forbidden")
        self.status = status


class ConnectionLost(BrokerError):
    """The connection ended before the answer came, or there is no connection now."""

    def __init__(self, message: str = "the connection to the broker was lost") -> None:
        super().__init__(message, "connection_lost")


class RequestTimeout(BrokerError, TimeoutError):
    """No answer within the request timeout."""


# -- messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One image of a subscribed camera, as its binary message carried it."""

    camera: str
    seq: int
    captured_at: float  # Unix seconds, from the worker's clock
    format: str  # jpeg, png, webp or bmp
    width: int
    height: int
    data: bytes
    received_at: float  # Unix seconds, this machine's clock
    header: Message = field(default_factory=dict, repr=False)  # the whole JSON header

    @property
    def latency(self) -> float:
        """Capture to receipt, in seconds (meaningful when both clocks are synchronised)."""
        return self.received_at - self.captured_at

    @property
    def placeholder(self) -> bool:
        """A generated "No Data" image, sent while the camera is offline."""
        return bool(self.header.get("placeholder", False))


def decode_frame(message: bytes, received_at: float | None = None) -> Frame:
    """A binary ``/ws`` message (`broker.protocol.mux`) as a `Frame`; ValueError if bad."""
    decoded = mux.decode(message)  # MuxError is a ValueError
    return Frame(
        camera=decoded.camera, seq=decoded.seq, captured_at=decoded.captured_at,
        format=decoded.format, width=decoded.width, height=decoded.height,
        data=decoded.image, received_at=time.time() if received_at is None else received_at,
        header=dict(decoded.header),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters since `connect`."""

    messages: int
    """Messages received, text and binary."""
    frames: int
    """Frames received."""
    dropped: int
    """Frames pushed out of the client's own queues before anyone read them."""
    gaps: int
    """Frames missing between consecutive sequence numbers of a camera: dropped by the
    broker for a slow connection, skipped for ``max_fps``, or never published."""
    reconnects: int
    """Connections made after the first one."""
    errors: int
    """``error`` messages received, and messages that could not be decoded."""
    handler_errors: int
    """Handler calls that raised."""
    handlers_skipped: int
    """Async handler calls not started because ``max_handler_tasks`` were running."""

    @property
    def drops(self) -> int:
        """Frames this client did not see: ``dropped + gaps``."""
        return self.dropped + self.gaps


# -- the client ----------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """A request waiting for its answer."""

    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None
    error: BrokerError | None = None

    def resolve(self, reply: Message) -> None:
        self.reply = reply
        self.done.set()

    def fail(self, error: BrokerError) -> None:
        self.error = error
        self.done.set()


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int
    resource: str  # path and query
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        tls = parts.scheme == "wss"
        default = 443 if tls else 80
        port = parts.port or default
        host_header = parts.netloc.rpartition("@")[2]
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, resource, host_header, tls)


class Client:
    """A connection to one broker; made and closed by `connect`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        reconnect: bool = True,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
        keepalive: float | None = 15.0,
        frame_queue: int = 8,
        max_handler_tasks: int = 32,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if frame_queue < 1:
            raise ValueError(f"frame_queue must be >= 1, got {frame_queue}")
        self.url = url
        self._endpoint = _Endpoint.parse(url)
        self._headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self.reconnect = reconnect
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.keepalive = keepalive
        self.frame_queue = frame_queue
        self.max_handler_tasks = max_handler_tasks
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_message_size = max_message_size
        self._ssl_context = ssl_context
        self._nursery: trio.Nursery | None = None
        self._ws: WebSocketConnection | None = None
        self._closing = False
        self._failure: BrokerError | None = None  # why the client gave up, if it did
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._subscriptions: dict[str, float | None] = {}
        # One drop-oldest queue per camera, so a fast camera cannot push a slow one's
        # frames out; arrival numbers keep the order across cameras.
        self._queues: dict[str, deque[tuple[int, Frame]]] = {}
        self._arrivals = itertools.count()  # orders frames across cameras
        self._frame_ready = trio.Event()
        self._last_seq: dict[str, int] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._any_handlers: list[Handler] = []
        self._handler_tasks = 0
        self._complaints = LogThrottle(log)
        self._counts = dict.fromkeys(ClientStats.__dataclass_fields__, 0)
        self._last_received = 0.0  # trio.current_time() of the last message

    # -- state -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def subscriptions(self) -> dict[str, float | None]:
        """Active subscriptions, camera → max_fps; sent again after each reconnect."""
        return dict(self._subscriptions)

    @property
    def stats(self) -> ClientStats:
        return ClientStats(**self._counts)

    # -- requests ------------------------------------------------------------------

    async def subscribe(self, camera: str, max_fps: float | None = None) -> Message:
        """Subscribe to ``camera`` (at most ``max_fps`` frames a second); returns the
        broker's ``subscribed`` answer, raises BrokerError on its ``error``.

        The subscription is recorded before the request goes out: if there is no
        connection or it drops meanwhile (ConnectionLost), or no answer comes in time
        (RequestTimeout), it stays and is sent again after reconnecting. An ``error``
        answer removes it (or restores the previous ``max_fps``).
        """
        before = self._subscriptions.get(camera, _ABSENT)
        self._subscriptions[camera] = max_fps
        self._queues.setdefault(camera, deque(maxlen=self.frame_queue))
        try:
            reply = await self._request("subscribe", **_subscription(camera, max_fps))
        except (ConnectionLost, RequestTimeout):
            raise
        except BrokerError:
            if before is _ABSENT:
                self._forget(camera)
            else:
                self._subscriptions[camera] = before  # type: ignore[assignment]
            raise
        return reply

    async def unsubscribe(self, camera: str) -> None:
        """Stop frames of ``camera``; frames still queued for it are discarded."""
        was_subscribed = camera in self._subscriptions
        self._forget(camera)
        if not self.connected:
            return  # a new connection starts without it anyway
        try:
            await self._request("unsubscribe", camera=camera)
        except ConnectionLost:
            pass  # the subscription ended with the connection
        except BrokerError as exc:
            if not (was_subscribed and exc.code == "not_subscribed"):
                raise  # else the broker had ended it already (the camera was removed)

    async def ping(self) -> float:
        """Round trip through the broker's WebSocket handler, in seconds."""
        start = trio.current_time()
        await self._request("ping", data=str(start))
        return trio.current_time() - start

    async def list_cameras(self) -> list[Message]:
        reply = await self._request("list_cameras")
        return list(reply.get("cameras", []))

    async def get_stats(self) -> Message:
        """The broker's statistics: the ``stats`` answer without type and request_id."""
        reply = await self._request("get_stats")
        return {k: v for k, v in reply.items() if k not in ("type", "request_id")}

    async def command(
        self,
        camera: str,
        command: str,
        /,
        settings: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> CommandResult:
        """Send ``command`` (update_settings, start_stream, stop_stream, get_status,
        restart_camera) to ``camera``. Settings come as a mapping, keywords, or both.

        Returns the result even when the camera refused (``success`` False); raises
        BrokerError when the broker refused the request itself (``error`` message:
        forbidden, rate_limited, ...), ConnectionLost or RequestTimeout.
        """
        fields: Message = {"camera": camera, "command": command}
        merged = {**(settings or {}), **changes}
        if merged or command == "update_settings":
            fields["settings"] = merged
        return CommandResult.from_json(await self._request("command", **fields))

    async def apply_preset(self, camera: str, preset: str) -> CommandResult:
        """Apply the broker's preset ``preset`` (its ``[presets.NAME]`` settings)."""
        reply = await self._request("command", camera=camera, command="apply_preset",
                                    preset=preset)  # fmt: skip
        return CommandResult.from_json(reply)

    async def update_settings(self, camera: str, **changes: Any) -> CommandResult:
        return await self.command(camera, "update_settings", changes)

    async def get_status(self, camera: str) -> CommandResult:
        return await self.command(camera, "get_status")

    async def _request(self, kind: str, **fields: Any) -> Message:
        """Send one request and wait, at most ``request_timeout``, for its answer."""
        ws = self._ws
        if ws is None:
            raise self._failure or ConnectionLost("not connected to the broker (reconnecting)")
        request_id = f"r{next(self._ids)}"
        pending = self._pending[request_id] = _Pending()
        message = json.dumps({"type": kind, **fields, "request_id": request_id})
        sending = False
        try:
            with trio.move_on_after(self.request_timeout):
                sending = True
                await ws.send_message(message)
                sending = False
                await pending.done.wait()
        except ConnectionClosed:
            sending = False  # nothing to protect on a closed connection
            raise ConnectionLost() from None
        finally:
            self._pending.pop(request_id, None)
            if sending:
                # Cancelled mid-send: part of a message may be on the wire, so this
                # connection cannot go on; the client reconnects.
                await trio.aclose_forcefully(ws._stream)
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            raise RequestTimeout(f"no answer to {kind} within {self.request_timeout:g} s",
                                 "timeout", request_id)  # fmt: skip
        if pending.reply.get("type") == "error":
            raise BrokerError.from_reply(pending.reply)
        return pending.reply

    # -- frames ----------------------------------------------------------------------

    def frames(self, camera: str | None = None) -> FrameStream:
        """Frames of every subscribed camera (or only ``camera``), oldest first.

        Ends when the client closes; raises the reason (ConnectionLost, AuthError) when
        the client gave up reconnecting. While reconnecting it simply waits.
        """
        return FrameStream(self, camera)

    def _next_frame(self, camera: str | None) -> Frame | None:
        if camera is not None:
            queue = self._queues.get(camera)
        else:  # the queue whose head arrived first
            heads = [q for q in self._queues.values() if q]
            queue = min(heads, key=lambda q: q[0][0]) if heads else None
        return queue.popleft()[1] if queue else None

    def _wake_frame_readers(self) -> None:
        self._frame_ready.set()
        self._frame_ready = trio.Event()

    def _forget(self, camera: str) -> None:
        self._subscriptions.pop(camera, None)
        self._last_seq.pop(camera, None)
        self._queues.pop(camera, None)

    # -- handlers ------------------------------------------------------------------

    def on(self, kind: str, handler: Handler | None = None) -> Any:
        """Call ``handler(message)`` for each message of type ``kind`` ("event", "error",
        "subscribed", ...), ``handler(frame)`` for "frame", and on the client's own
        "connected" / "disconnected". Sync or async; usable as a decorator."""
        if handler is None:
            return lambda fn: self.on(kind, fn)
        self._handlers.setdefault(kind, []).append(handler)
        return handler

    def on_any(self, handler: Handler) -> Handler:
        """Call ``handler(message)`` for every JSON message from the broker."""
        self._any_handlers.append(handler)
        return handler

    def off(self, kind: str, handler: Handler) -> None:
        if handler in self._handlers.get(kind, ()):
            self._handlers[kind].remove(handler)

    def off_any(self, handler: Handler) -> None:
        if handler in self._any_handlers:
            self._any_handlers.remove(handler)

    def _dispatch(self, kind: str, payload: Any, generic: bool = False) -> None:
        handlers = self._handlers.get(kind, [])
        for handler in [*handlers, *self._any_handlers] if generic else list(handlers):
            try:
                result = handler(payload)
            except Exception as exc:
                self._handler_failed(kind, handler, exc)
                continue
            if not inspect.isawaitable(result):
                continue
            if self._handler_tasks >= self.max_handler_tasks or self._nursery is None:
                self._counts["handlers_skipped"] += 1
                if inspect.iscoroutine(result):
                    result.close()
                self._complaints.warning(
                    "handlers", "%d async handlers still running: skipped a %s handler call",
                    self._handler_tasks, kind,
                )  # fmt: skip
                continue
            self._handler_tasks += 1
            self._nursery.start_soon(self._await_handler, kind, handler, result)

    async def _await_handler(self, kind: str, handler: Handler, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._handler_failed(kind, handler, exc)
        finally:
            self._handler_tasks -= 1

    def _handler_failed(self, kind: str, handler: Handler, exc: Exception) -> None:
        """Count it; log it with its traceback, at most once per kind every 5 s (a
        frame handler that always fails would otherwise flood the log)."""
        self._counts["handler_errors"] += 1
        trace = "".join(traceback.format_exception(exc)).rstrip()
        self._complaints.warning("handler:" + kind, "%s handler %r failed:\n%s", kind, handler,
                                 trace)  # fmt: skip

    # -- the connection ------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (errors of this first attempt go to `connect`), then serve and
        reconnect until closed or refused."""
        await self._connection(task_status, resume=False)
        delay = self.backoff_initial
        while not self._closing:
            if not self.reconnect:
                self._give_up(ConnectionLost("the connection to the broker ended"))
                return
            await trio.sleep(random.uniform(delay / 2, delay))
            try:
                await self._connection(trio.TASK_STATUS_IGNORED, resume=True)
            except AuthError as exc:
                log.error("reconnect to %s refused: %s", self.url, exc)
                self._give_up(exc)
                return
            except ConnectError as exc:
                delay = min(delay * 2, self.backoff_max)
                log.info("reconnect to %s failed (%s); next try within %.1f s",
                         self.url, exc, delay)  # fmt: skip
            else:
                delay = self.backoff_initial

    async def _connection(self, task_status: trio.TaskStatus[None], resume: bool) -> None:
        """One connection: handshake, then serve until it ends. Raises ConnectError
        (AuthError on 401/403) when no connection was made."""
        stream = await self._open_stream()
        failure: ConnectError | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws = None
                with trio.move_on_after(self.connect_timeout):
                    ws = await _wrap_client_stream(
                        nursery, stream, self._endpoint.host_header, self._endpoint.resource,
                        extra_headers=self._headers, max_message_size=self.max_message_size,
                    )  # fmt: skip
                if ws is None:
                    failure = ConnectError(f"{self.url}: no WebSocket handshake within "
                                           f"{self.connect_timeout:g} s", "timeout")  # fmt: skip
                    nursery.cancel_scope.cancel()
                else:
                    await self._serve(ws, nursery, task_status, resume)
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

    async def _open_stream(self) -> trio.abc.Stream:
        endpoint = self._endpoint
        try:
            with trio.fail_after(self.connect_timeout):
                if not endpoint.tls:
                    return await trio.open_tcp_stream(endpoint.host, endpoint.port)
                return await trio.open_ssl_over_tcp_stream(
                    endpoint.host, endpoint.port, https_compatible=True,
                    ssl_context=self._ssl_context or ssl.create_default_context(),
                )  # fmt: skip
        except (OSError, trio.TooSlowError) as exc:
            reason = str(exc) or "timed out"
            raise ConnectError(f"cannot connect to {self.url}: {reason}", "unreachable") from exc

    async def _serve(
        self,
        ws: WebSocketConnection,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[None],
        resume: bool,
    ) -> None:
        self._ws = ws
        if resume:
            self._counts["reconnects"] += 1
            log.info("reconnected to %s", self.url)
        task_status.started()
        self._dispatch("connected", {"type": "connected", "url": self.url, "reconnect": resume})
        if resume and self._subscriptions:
            nursery.start_soon(self._resubscribe)
        if self.keepalive:
            nursery.start_soon(self._keep_alive, ws)
        try:
            await self._receive(ws)
            if self._closing:
                # `connect` is in the close handshake, which needs the reader task
                # (in this nursery) alive until the broker answers; it cancels us after.
                await trio.sleep_forever()
        finally:
            self._ws = None
            self._last_seq.clear()  # frames missed while away are not gaps in a stream
            for pending in self._pending.values():
                pending.fail(ConnectionLost())
            nursery.cancel_scope.cancel()
        code = ws.closed.code if ws.closed else None
        log.info("connection to %s ended (close code %s)", self.url, code)
        self._dispatch("disconnected", {"type": "disconnected", "url": self.url, "code": code})

    async def _resubscribe(self) -> None:
        for camera, max_fps in list(self._subscriptions.items()):
            try:
                await self._request("subscribe", **_subscription(camera, max_fps))
            except (ConnectionLost, RequestTimeout) as exc:
                log.info("resubscribing to %s: %s", camera, exc)
                return  # the connection is going; the next one tries again
            except BrokerError as exc:
                log.warning("camera %s: subscription refused after reconnecting: %s", camera, exc)
                self._forget(camera)

    async def _keep_alive(self, ws: WebSocketConnection) -> None:
        """A broker that hangs, or a network that silently drops the connection, sends
        no close: after ``keepalive`` seconds of silence, a WebSocket ping must bring a
        pong within ``request_timeout``, or the connection is dropped (and re-made)."""
        assert self.keepalive
        self._last_received = trio.current_time()
        while True:
            await trio.sleep_until(self._last_received + self.keepalive)
            if trio.current_time() - self._last_received < self.keepalive:
                continue  # a message came meanwhile
            with trio.move_on_after(self.request_timeout) as timer:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if timer.cancelled_caught:
                log.warning("no pong from %s within %.1f s: dropping the connection",
                            self.url, self.request_timeout)  # fmt: skip
                await trio.aclose_forcefully(ws._stream)
                return
            self._last_received = trio.current_time()

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            self._last_received = trio.current_time()
            self._counts["messages"] += 1
            if isinstance(message, bytes):
                self._on_binary(message)
            else:
                self._on_text(message)

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            self._counts["errors"] += 1
            self._complaints.warning("text", "undecodable message from the broker: %.200r", text)
            return
        if kind == "error":
            self._counts["errors"] += 1
        rid = message.get("request_id")
        pending = self._pending.get(str(rid)) if rid is not None else None
        if pending is not None:
            pending.resolve(message)
        elif kind == "error":
            log.warning("broker error: %s: %s", message.get("code"), message.get("message"))
        elif kind == "unsubscribed" and rid is None:  # the broker ended it (camera removed)
            log.info("camera %s: subscription ended by the broker (%s)", message.get("camera"),
                     message.get("reason"))  # fmt: skip
            self._forget(str(message.get("camera")))
        self._dispatch(str(kind), message, generic=True)

    def _on_binary(self, message: bytes) -> None:
        try:
            frame = decode_frame(message)
        except ValueError as exc:
            self._counts["errors"] += 1
            self._complaints.warning("frame", "undecodable frame from the broker: %s", exc)
            return
        self._counts["frames"] += 1
        queue = self._queues.get(frame.camera)
        if queue is None:
            return  # in flight when we unsubscribed
        last = self._last_seq.get(frame.camera)
        if last is not None and frame.seq > last + 1:
            self._counts["gaps"] += frame.seq - last - 1
        self._last_seq[frame.camera] = frame.seq
        if len(queue) == queue.maxlen:
            self._counts["dropped"] += 1  # the append below pushes the oldest out
        queue.append((next(self._arrivals), frame))
        self._wake_frame_readers()
        self._dispatch("frame", frame)

    def _give_up(self, reason: BrokerError) -> None:
        self._failure = reason
        self._wake_frame_readers()

    async def _close(self) -> None:
        """Close with 1000 (normal closure), bounded by ``close_timeout`` even if cancelled."""
        self._closing = True
        self._wake_frame_readers()
        ws = self._ws
        if ws is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout):
                await ws.aclose(NORMAL_CLOSURE)


class FrameStream:
    """``async for frame in client.frames()``; see `Client.frames`."""

    def __init__(self, client: Client, camera: str | None) -> None:
        self._client = client
        self._camera = camera

    def __aiter__(self) -> FrameStream:
        return self

    async def __anext__(self) -> Frame:
        client = self._client
        await trio.lowlevel.checkpoint()  # before taking a frame, so a cancel loses none
        while True:
            frame = client._next_frame(self._camera)
            if frame is not None:
                return frame
            if client._failure is not None:
                raise client._failure
            if client._closing:
                raise StopAsyncIteration
            await client._frame_ready.wait()


_ABSENT = object()


def _subscription(camera: str, max_fps: float | None) -> Message:
    return {"camera": camera} if max_fps is None else {"camera": camera, "max_fps": max_fps}


def _find(group: BaseExceptionGroup, kind: type[BaseException]) -> Any:
    """The first exception of ``kind`` in ``group`` (nested groups included), or None."""
    matched = group.subgroup(kind)
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched


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
    return ConnectError(f"{url}: the broker refused the WebSocket handshake with "
                        f"{status}{detail}", f"http_{status}")  # fmt: skip


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` without making the group it came out of its context."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@asynccontextmanager
async def connect(url: str, token: str | None = None, **options: Any) -> AsyncIterator[Client]:
    """Connect to the broker's ``/ws`` and yield a `Client`; leaving closes it (1000).

    Raises ConnectError (AuthError for 401/403) when the first connection fails; after
    that the client reconnects by itself (``reconnect=False`` to stop instead). Options
    are `Client`'s keyword arguments. Exceptions from the body come out as they are,
    not wrapped in an exception group.
    """
    client = Client(url, token, **options)
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            await nursery.start(client._run)
            try:
                yield client
            finally:
                await client._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            _reraise(group.exceptions[0])
        raise


__all__ = [
    "AuthError",
    "BrokerError",
    "Client",
    "ClientStats",
    "CommandResult",
    "ConnectError",
    "ConnectionLost",
    "Frame",
    "FrameStream",
    "RequestTimeout",
    "connect",
    "decode_frame",
]
