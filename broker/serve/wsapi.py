"""The multiplexed WebSocket endpoint ``/ws``: many cameras, commands and events on one
connection (docs/protocol.md, "Multiplexed WebSocket").

Requests and answers are JSON text messages; frames are binary messages, a small JSON
header then the image, built once per frame (`Frame.mux_message`) and shared by every
client. Per connection, one task reads requests and answers them in order; each
subscription has its own hub subscriber (drop-oldest queue) and sender task, paced and
cut off exactly like the per-camera endpoint (`Delivery.send_frames`); each command runs
in a task of its own, so a slow camera never holds up frames, pings or other requests;
one task forwards control events. Every request gets an answer: a reply, or ``error``
with a code, and the connection stays up: requests beyond ``server.ws_request_rate``
get ``rate_limited``, and a bug met while serving a request, sending a subscription's
frames or forwarding an event costs ``internal_error`` (counted in ``faults``), not the
connection. Per-subscription log lines are rate-limited: a client cycling subscribe and
unsubscribe cannot flood the log. Kept whole past 400 lines: one connection's tasks and
their shared state (the subscriptions, the answer order) read better in one place; the
request parsing is `broker.serve.wsrequests`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from broker.config import Config
from broker.core.frame import Frame
from broker.core.hub import Hub
from broker.core.subscriber import Subscriber, SubscriptionEnded
from broker.protocol.control import COMMANDS
from broker.serve.access import Grant
from broker.serve.delivery import Delivery, direct_writer, next_event, write_whole
from broker.serve.router import CommandRate, may_command
from broker.serve.views import Views
from broker.serve.wsframes import abort, close_going_away, send_prebuilt, transport
from broker.serve.wsrequests import (
    RequestError,
    echoable,
    is_number,
    parse_request,
    request_id_of,
    string_field,
)
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.ratelimit import RateLimiter

if TYPE_CHECKING:
    from broker.control import Control

log = logging.getLogger("broker.wsapi")

MAX_MESSAGE = 1024 * 1024  # trio-websocket closes the connection (1009) beyond this
MAX_FPS = 1000.0
APPLY_PRESET = "apply_preset"  # a /ws command besides the worker's COMMANDS
SUBSCRIBER_KIND = "ws-mux"


@dataclass(eq=False)
class Subscription:
    subscriber: Subscriber
    max_fps: float | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class WsApi:
    """What every ``/ws`` connection shares, and the counters /healthz reports."""

    def __init__(
        self,
        config: Config,
        hub: Hub,
        delivery: Delivery,
        views: Views,
        control: Control | None,
        commands: CommandRate,
        faults: Faults | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.delivery = delivery
        self.views = views
        self.control = control
        self.commands = commands  # shared with HTTP, keyed by connection here
        self.faults = faults if faults is not None else Faults()
        self.errors: Counter[str] = Counter()  # error messages sent, by code
        self.connections = 0
        self.opened = itertools.count()  # numbers each connection: its command rate key
        self.complaints = LogThrottle(log)  # errors and subscriptions, keyed by kind

    async def serve(self, ws: WebSocketConnection, grant: Grant, client: str) -> None:
        """Serve one accepted connection until the client leaves or we shut down."""
        self.connections += 1
        try:
            await Session(self, ws, grant, client).run()
        finally:
            self.connections -= 1


Handler = Callable[["Session", dict[str, Any], Any], Awaitable[None]]


class Session:
    """One ``/ws`` connection."""

    def __init__(self, api: WsApi, ws: WebSocketConnection, grant: Grant, client: str) -> None:
        self.api = api
        self.ws = ws
        self.grant = grant
        self.client = client
        self.subscriptions: dict[str, Subscription] = {}
        self.subscribed = 0  # subscribe requests served, for the log
        self.key = ("ws", next(api.opened))  # never a token or an address (HTTP's keys)
        self.requests = RateLimiter(api.config.server.ws_request_rate)
        self._nursery: trio.Nursery | None = None
        self._ending = False  # we ended it (client gone or too slow): no 1001 to send

    async def run(self) -> None:
        log.info("client %s: connected to /ws (%s)", self.client, self.grant.name)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.api.control is not None:
                    nursery.start_soon(self._forward_events, self.api.control)
                try:
                    await self._receive()
                except trio.Cancelled:
                    if not self._ending and self.ws.closed is None:  # we are shutting down
                        await close_going_away(self.ws)
                    raise
                nursery.cancel_scope.cancel()
        finally:
            for subscription in self.subscriptions.values():
                self.api.hub.unsubscribe(subscription.subscriber)
            log.info(
                "client %s: left /ws (%d subscribe requests served)", self.client, self.subscribed
            )

    def _end(self) -> None:
        """Stop every task of this connection (the client left, or was cut off)."""
        self._ending = True
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    # -- sending -----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message; a client that does not take it within the send
        timeout is cut off, one that has gone ends the connection. A message that cannot
        be JSON (a worker's bytes key, a NaN) is a fault: ``internal_error`` goes out."""
        try:
            # Whatever an event's values are, they go out as text; never NaN/Infinity.
            data = json.dumps(message, default=str, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            self.api.faults.record("ws_api", exc, f"encoding a {message.get('type')!r} message")
            self.api.errors["internal_error"] += 1
            data = json.dumps(
                {
                    "type": "error",
                    "code": "internal_error",
                    "message": "the broker could not encode this message",
                    "request_id": echoable(message.get("request_id")),
                }
            )
        timeout = self.api.config.server.send_timeout
        try:
            with trio.move_on_after(timeout) as timer:
                await self.ws.send_message(data)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self._end()
            return
        if timer.cancelled_caught:
            self.api.delivery.slow_disconnects += 1
            log.warning(
                "client %s: took no message within %.1f s on /ws; disconnected",
                self.client,
                timeout,
            )
            await abort(self.ws)
            self._end()

    async def reply(self, kind: str, request_id: Any, **fields: Any) -> None:
        await self.send({"type": kind, **fields, "request_id": request_id})

    async def error(self, code: str, message: str, request_id: Any) -> None:
        self.api.errors[code] += 1
        self.api.complaints.warning(code, "client %s: /ws error %s: %s", self.client, code, message)
        await self.reply("error", request_id, code=code, message=message)

    # -- receiving ---------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                self._ending = True
                return
            await self._handle(message)

    async def _handle(self, message: str | bytes) -> None:
        request_id = None
        within_rate = self.requests.allow()  # every message counts, even a bad one
        try:
            request = parse_request(message)
            request_id = request_id_of(request)
            if not within_rate:
                rate = self.api.config.server.ws_request_rate
                raise RequestError(
                    "rate_limited",
                    f"more than {rate:g} requests a second on "
                    "this connection; this one was dropped",
                )
            kind = string_field(request, "type")
            handler = HANDLERS.get(kind)
            if handler is None:
                raise RequestError(
                    "unknown_type", f"unknown type {kind!r} (known: {', '.join(HANDLERS)})"
                )
            await handler(self, request, request_id)
        except RequestError as bad:
            await self.error(bad.code, bad.message, request_id)
        except Exception as exc:  # a bug must cost one answer, not the server
            self.api.faults.record("ws_api", exc, "a /ws request")
            await self.error("internal_error", "the broker failed on this request", request_id)

    # -- requests ----------------------------------------------------------------

    async def subscribe(self, request: dict[str, Any], request_id: Any) -> None:
        camera = self._watchable(request)
        max_fps = request.get("max_fps")
        # The range check also excludes infinities (and a huge int without overflow).
        if max_fps is not None and not (is_number(max_fps) and 0 < max_fps <= MAX_FPS):
            raise RequestError(
                "invalid_field",
                f"field 'max_fps' must be a number above 0 and at most {MAX_FPS:g}, or null",
            )
        max_fps = None if max_fps is None else float(max_fps)
        self._drop(camera)  # subscribing again changes max_fps
        depth = self.api.config.server.queue_depth
        subscriber = self.api.hub.subscribe(camera, self.client, depth, SUBSCRIBER_KIND)
        subscription = self.subscriptions[camera] = Subscription(subscriber, max_fps)
        self.subscribed += 1
        cap = f" (at most {max_fps:g} fps)" if max_fps else ""
        self.api.complaints.log(
            logging.INFO,
            "subscribe",
            "client %s: watching camera %s over /ws%s",
            self.client,
            camera,
            cap,
        )
        await self.reply("subscribed", request_id, camera=camera, max_fps=max_fps)
        assert self._nursery is not None
        self._nursery.start_soon(self._send_frames, camera, subscription)

    async def unsubscribe(self, request: dict[str, Any], request_id: Any) -> None:
        camera = string_field(request, "camera")
        if not self._drop(camera):
            self._watchable(request)  # forbidden or unknown, else:
            raise RequestError("not_subscribed", f"not subscribed to camera {camera!r}")
        await self.reply("unsubscribed", request_id, camera=camera)

    async def ping(self, request: dict[str, Any], request_id: Any) -> None:
        await self.reply("pong", request_id, data=request.get("data"), time=time.time())

    async def list_cameras(self, request: dict[str, Any], request_id: Any) -> None:
        await self.reply("cameras", request_id, cameras=self.api.views.cameras(self.grant))

    async def get_stats(self, request: dict[str, Any], request_id: Any) -> None:
        await self.reply("stats", request_id, **self.api.views.stats(self.grant))

    async def command(self, request: dict[str, Any], request_id: Any) -> None:
        camera = string_field(request, "camera")
        command = string_field(request, "command")
        known = (*COMMANDS, APPLY_PRESET)
        if command not in known:
            raise RequestError(
                "unknown_command", f"unknown command {command!r} (known: {', '.join(known)})"
            )
        settings = request.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise RequestError("invalid_field", "field 'settings' must be an object")
        preset = string_field(request, "preset") if command == APPLY_PRESET else None
        # Limited before anything else is decided, so refusals cost a client too.
        if not self.api.commands.allow(self.key):
            raise RequestError(
                "rate_limited", f"{self.api.commands.refusal()}; this one was dropped"
            )
        refusal = may_command(self.grant, camera)
        if refusal is not None:
            raise RequestError("forbidden", refusal)
        control = self.api.control
        if control is None:
            raise RequestError("no_control", "the broker has no control channel")
        assert self._nursery is not None
        self._nursery.start_soon(
            self._run_command, control, camera, command, settings, preset, request_id
        )

    # -- tasks ---------------------------------------------------------------------

    async def _send_frames(self, camera: str, subscription: Subscription) -> None:
        ws = self.ws
        failed = False
        with subscription.scope:  # cancelled by unsubscribe
            try:
                subscriber = subscription.subscriber
                # Whole frames: an unsubscribe must not leave half of one on the wire.
                await self.api.delivery.send_frames(
                    functools.partial(write_whole, functools.partial(send_prebuilt, ws)),
                    transport(ws),
                    subscriber,
                    subscription.max_fps,
                    Frame.mux_message,
                    direct_writer(ws, subscriber, Frame.mux_message, whole=True),
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._end()  # the client went away
                return
            except SubscriptionEnded:
                pass  # the camera is gone (an expired session): tell the client, below
            except Exception as exc:  # a bug: this subscription ends, not the connection
                self.api.faults.record("ws_api", exc, "sending a subscription's frames")
                failed = True
            else:
                self._end()  # too slow: send_frames has already dropped the connection
                return
        if self.subscriptions.get(camera) is not subscription:
            return  # unsubscribed meanwhile
        self._drop(camera)
        if failed:
            await self.error(
                "internal_error", f"the broker failed to send camera {camera!r}; unsubscribed", None
            )
        else:
            await self.reply("unsubscribed", None, camera=camera, reason="camera_removed")

    async def _run_command(
        self,
        control: Control,
        camera: str,
        command: str,
        settings: dict[str, Any] | None,
        preset: str | None,
        request_id: Any,
    ) -> None:
        rid = None if request_id is None else str(request_id)
        try:
            if command == APPLY_PRESET:
                assert preset is not None
                status = await control.apply_preset(camera, preset, rid)
            else:
                status = await control.command(camera, command, settings, rid)
        except Exception as exc:  # Control answers problems itself; this is a bug
            self.api.faults.record("ws_api", exc, f"command {command} on camera {camera}")
            await self.error("internal_error", f"the broker failed to run {command}", request_id)
            return
        result = status.to_json()
        if request_id is not None:
            result["request_id"] = request_id  # as the client sent it, a number stays one
        await self.send({"type": "command_result", **result})

    async def _forward_events(self, control: Control) -> None:
        listener = control.events.listen()
        try:
            while True:
                event = await next_event(listener)
                if self.grant.can_watch(event.camera):
                    await self.send(event.to_json())  # which answers internal_error if it must
        finally:
            control.events.unlisten(listener)

    # -- helpers -------------------------------------------------------------------

    def _watchable(self, request: dict[str, Any]) -> str:
        """The request's camera, if this token may watch it and it exists."""
        camera = string_field(request, "camera")
        if not self.grant.can_watch(camera):  # before "unknown": say nothing of others
            raise RequestError("forbidden", f"this token may not access camera {camera!r}")
        if camera not in self.api.hub.cameras:
            raise RequestError("unknown_camera", f"no camera {camera!r}")
        return camera

    def _drop(self, camera: str) -> bool:
        """End the subscription to ``camera``; False when there was none."""
        subscription = self.subscriptions.pop(camera, None)
        if subscription is None:
            return False
        subscription.scope.cancel()
        self.api.hub.unsubscribe(subscription.subscriber)
        self.api.complaints.log(
            logging.INFO,
            "unsubscribe",
            "client %s: left camera %s on /ws (sent %d frames, dropped %d)",
            self.client,
            camera,
            subscription.subscriber.sent,
            subscription.subscriber.dropped,
        )
        return True


HANDLERS: dict[str, Handler] = {
    "subscribe": Session.subscribe,
    "unsubscribe": Session.unsubscribe,
    "ping": Session.ping,
    "list_cameras": Session.list_cameras,
    "get_stats": Session.get_stats,
    "command": Session.command,
}
