"""`Client` and `connect`: the requests, subscriptions, frames and handlers of one
connection to a broker, on top of the parts in this package."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn, TypeVar, overload

import trio

from broker.client.connection import MAX_MESSAGE_SIZE, Link, LinkEvents, LinkOptions
from broker.client.errors import BrokerError, ConnectionLost, Message, RequestTimeout
from broker.client.frames import FrameQueues, FrameStream, decode_frame
from broker.client.handlers import Handler, Handlers
from broker.client.requests import Requests
from broker.client.stats import ClientStats
from broker.protocol.results import CommandResult
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.client")

H = TypeVar("H", bound=Handler)

_ABSENT: Final = object()


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
        options = LinkOptions(
            reconnect,
            connect_timeout,
            close_timeout,
            keepalive,
            request_timeout,
            backoff_initial,
            backoff_max,
            max_message_size,
            ssl_context,
        )
        events = LinkEvents(
            self._opened, self._received, self._dropped, self._closed, self._gave_up
        )
        self._link = Link(url, token, options, events)
        self._requests = Requests(self._link.send, request_timeout)
        self._queues = FrameQueues(frame_queue)
        self._complaints = LogThrottle(log)
        self._handlers = Handlers(max_handler_tasks, self._complaints)
        self._subscriptions: dict[str, float | None] = {}
        self._messages = self._frames = self._errors = self._reconnects = 0

    # -- state -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def subscriptions(self) -> dict[str, float | None]:
        """Active subscriptions, camera → max_fps; sent again after each reconnect."""
        return dict(self._subscriptions)

    @property
    def stats(self) -> ClientStats:
        return ClientStats(
            messages=self._messages,
            frames=self._frames,
            dropped=self._queues.dropped,
            gaps=self._queues.gaps,
            reconnects=self._reconnects,
            errors=self._errors,
            handler_errors=self._handlers.errors,
            handlers_skipped=self._handlers.skipped,
        )

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
        self._queues.open(camera)
        try:
            reply = await self._requests.request("subscribe", **_subscription(camera, max_fps))
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
            await self._requests.request("unsubscribe", camera=camera)
        except ConnectionLost:
            pass  # the subscription ended with the connection
        except BrokerError as exc:
            if not (was_subscribed and exc.code == "not_subscribed"):
                raise  # else the broker had ended it already (the camera was removed)

    async def ping(self) -> float:
        """Round trip through the broker's WebSocket handler, in seconds."""
        start = trio.current_time()
        await self._requests.request("ping", data=str(start))
        return trio.current_time() - start

    async def list_cameras(self) -> list[Message]:
        reply = await self._requests.request("list_cameras")
        return list(reply.get("cameras", []))

    async def get_stats(self) -> Message:
        """The broker's statistics: the ``stats`` answer without type and request_id."""
        reply = await self._requests.request("get_stats")
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
        return CommandResult.from_json(await self._requests.request("command", **fields))

    async def apply_preset(self, camera: str, preset: str) -> CommandResult:
        """Apply the broker's preset ``preset`` (its ``[presets.NAME]`` settings); returns
        and raises as `command` does."""
        reply = await self._requests.request(
            "command", camera=camera, command="apply_preset", preset=preset
        )
        return CommandResult.from_json(reply)

    async def update_settings(self, camera: str, **changes: Any) -> CommandResult:
        return await self.command(camera, "update_settings", changes)

    async def get_status(self, camera: str) -> CommandResult:
        return await self.command(camera, "get_status")

    # -- frames ----------------------------------------------------------------------

    def frames(self, camera: str | None = None) -> FrameStream:
        """Frames of every subscribed camera (or only ``camera``), oldest first.

        Ends when the client closes; raises the reason (ConnectionLost, AuthError) when
        the client gave up reconnecting. While reconnecting it simply waits.
        """
        return FrameStream(self._queues, camera)

    def _forget(self, camera: str) -> None:
        self._subscriptions.pop(camera, None)
        self._queues.forget(camera)

    # -- handlers ------------------------------------------------------------------

    @overload
    def on(self, kind: str) -> Callable[[H], H]: ...
    @overload
    def on(self, kind: str, handler: H) -> H: ...
    def on(self, kind: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Call ``handler(message)`` for each message of type ``kind`` ("event", "error",
        "subscribed", ...), ``handler(frame)`` for "frame", and on the client's own
        "connected" / "disconnected". Sync or async; usable as a decorator."""
        if handler is None:
            return lambda fn: self.on(kind, fn)
        self._handlers.add(kind, handler)
        return handler

    def on_any(self, handler: H) -> H:
        """Call ``handler(message)`` for every JSON message from the broker."""
        self._handlers.add_any(handler)
        return handler

    def off(self, kind: str, handler: Handler) -> None:
        self._handlers.remove(kind, handler)

    def off_any(self, handler: Handler) -> None:
        self._handlers.remove_any(handler)

    # -- what the connection tells us ------------------------------------------------

    def _opened(self, nursery: trio.Nursery, resume: bool) -> None:
        if resume:
            self._reconnects += 1
        self._handlers.dispatch(
            "connected", {"type": "connected", "url": self.url, "reconnect": resume}
        )
        if resume and self._subscriptions:
            nursery.start_soon(self._resubscribe)

    async def _resubscribe(self) -> None:
        for camera, max_fps in list(self._subscriptions.items()):
            try:
                await self._requests.request("subscribe", **_subscription(camera, max_fps))
            except (ConnectionLost, RequestTimeout) as exc:
                log.info("resubscribing to %s: %s", camera, exc)
                return  # the connection is going; the next one tries again
            except BrokerError as exc:
                log.warning("camera %s: subscription refused after reconnecting: %s", camera, exc)
                self._forget(camera)

    def _received(self, message: str | bytes) -> None:
        self._messages += 1
        if isinstance(message, bytes):
            self._on_binary(message)
        else:
            self._on_text(message)

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            self._errors += 1
            self._complaints.warning("text", "undecodable message from the broker: %.200r", text)
            return
        if kind == "error":
            self._errors += 1
        if self._requests.answer(message):
            pass
        elif kind == "error":
            log.warning("broker error: %s: %s", message.get("code"), message.get("message"))
        elif kind == "unsubscribed" and message.get("request_id") is None:
            # The broker ended it (the camera was removed).
            log.info(
                "camera %s: subscription ended by the broker (%s)",
                message.get("camera"),
                message.get("reason"),
            )
            self._forget(str(message.get("camera")))
        self._handlers.dispatch(str(kind), message, generic=True)

    def _on_binary(self, message: bytes) -> None:
        try:
            frame = decode_frame(message)
        except ValueError as exc:
            self._errors += 1
            self._complaints.warning("frame", "undecodable frame from the broker: %s", exc)
            return
        self._frames += 1
        if self._queues.put(frame):  # else in flight when we unsubscribed
            self._handlers.dispatch("frame", frame)

    def _dropped(self) -> None:
        self._queues.new_connection()
        self._requests.fail_all()

    def _closed(self, code: int | None) -> None:
        self._handlers.dispatch(
            "disconnected", {"type": "disconnected", "url": self.url, "code": code}
        )

    def _gave_up(self, reason: BrokerError) -> None:
        self._queues.fail(reason)

    async def _close(self) -> None:
        self._queues.close()
        await self._link.close()


def _subscription(camera: str, max_fps: float | None) -> Message:
    return {"camera": camera} if max_fps is None else {"camera": camera, "max_fps": max_fps}


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
            client._handlers.nursery = nursery
            await nursery.start(client._link.run)
            try:
                yield client
            finally:
                await client._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            _reraise(group.exceptions[0])
        raise
