"""Feeding viewers: one camera per WebSocket or MJPEG response, and the send loop that
every frame output shares (the multiplexed ``/ws`` endpoint in `broker.serve.wsapi` too).

Each client reads from its own drop-oldest queue (`broker.core.hub.Subscriber`) in its own
task; a client that takes no frame within ``server.send_timeout`` is cut off, since a
frame may then be half on the wire.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from broker.config import ServerConfig
from broker.core.frame import MJPEG_BOUNDARY, Frame
from broker.core.hub import Hub, Subscriber, SubscriptionEnded
from broker.serve.wsframes import close_going_away, direct_access, send_prebuilt

log = logging.getLogger("broker.server")

MJPEG_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    f"Content-Type: multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}\r\n"
    "Cache-Control: no-store\r\n"
    "Connection: close\r\n\r\n"  # the body ends when the connection does
).encode()


class Streams:
    def __init__(self, hub: Hub, config: ServerConfig) -> None:
        self.hub = hub
        self.config = config
        self.slow_disconnects = 0

    async def send_frames(
        self,
        write: Callable[[bytes], Awaitable[None]],
        stream: trio.abc.Stream,
        subscriber: Subscriber,
        max_fps: float | None,
        message: Callable[[Frame], bytes],
        direct: DirectWriter | None = None,
    ) -> None:
        """Feed one client from its queue; on a send timeout abort ``stream`` and return.

        With ``max_fps`` the newest frame is taken at most that often. With ``direct``,
        frames that arrive while the client is idle are written by `Hub.publish` itself
        (see `DirectWriter`); this task writes the rest of one written only in part.
        Raises `SubscriptionEnded` when the camera goes away, and trio's Broken/Closed
        errors when the client does.
        """
        send_timeout = self.config.send_timeout
        subscriber.cap(max_fps)
        interval = subscriber.interval
        # One cancel scope for the whole stream, armed only while a frame is being
        # written: cheaper than a scope per frame on the hot path.
        with trio.CancelScope() as timer:
            while True:
                timer.deadline = math.inf
                frame = await subscriber.next_frame(newest=bool(interval), direct=direct)
                if subscriber.inflight is not None and direct is not None:
                    rest = subscriber.inflight[1]
                    timer.deadline = trio.current_time() + send_timeout
                    try:
                        await direct.finish(stream, rest)
                    except trio.Cancelled:
                        if trio.current_time() < timer.deadline:
                            # Cancelled from outside (an unsubscribe) with half a frame
                            # out: the connection cannot go on. A deadline is handled below.
                            await trio.aclose_forcefully(stream)
                        raise
                    finally:
                        subscriber.inflight = None
                    subscriber.delivered(frame)
                    continue
                if interval:
                    # Keep the cadence while on time; after the first frame or a stall,
                    # start it afresh from now, so two frames never go out back to back.
                    now, due = time.monotonic(), subscriber.next_due
                    subscriber.next_due = due + interval if now - due < interval else now + interval
                timer.deadline = trio.current_time() + send_timeout
                await write(message(frame))
                subscriber.delivered(frame)
        if not timer.cancelled_caught:
            return
        # The deadline passed mid-write: part of a frame may be on the wire, so the
        # connection cannot be reused.
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

    # -- MJPEG ---------------------------------------------------------------

    async def mjpeg(self, stream: trio.SocketStream, camera_id: str, max_fps: float | None,
                    client: str, head_only: bool) -> None:  # fmt: skip
        """``multipart/x-mixed-replace`` until the client leaves: one shared, pre-built part
        per frame, through the same drop-oldest queue and send timeout as WebSocket."""
        with trio.move_on_after(self.config.send_timeout):
            await stream.send_all(MJPEG_HEAD)
        if head_only:
            return
        subscriber = self.hub.subscribe(camera_id, client, self.config.queue_depth, "mjpeg")
        log.info("client %s: watching camera %s over MJPEG", client, camera_id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_eof, stream, nursery.cancel_scope)
                await self.send_frames(stream.send_all, stream, subscriber, max_fps,
                                       Frame.mjpeg_part)  # fmt: skip
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, SubscriptionEnded):
            pass  # the client or the camera went away (raised in a nursery: a group)
        finally:
            self.hub.unsubscribe(subscriber)
            log.info("client %s: left camera %s (sent %d frames, dropped %d)", client,
                     camera_id, subscriber.sent, subscriber.dropped)  # fmt: skip

    # -- one camera per WebSocket ------------------------------------------------

    async def camera_websocket(
        self, ws: WebSocketConnection, camera_id: str, max_fps: float | None, client: str
    ) -> None:
        """Stream one camera's images to an accepted WebSocket until either side ends."""
        subscriber = self.hub.subscribe(camera_id, client, self.config.queue_depth)
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

    async def _stream_frames(
        self, ws: WebSocketConnection, subscriber: Subscriber, max_fps: float | None
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
            try:
                await self.send_frames(
                    functools.partial(send_prebuilt, ws), ws._stream, subscriber, max_fps,
                    Frame.websocket_message, direct_writer(ws, subscriber, Frame.websocket_message),
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


class DirectWriter:
    """Writes a frame to an idle WebSocket client from `Hub.publish` itself: one
    non-blocking ``send`` instead of waking the client's task, the largest cost per
    frame per client once the bytes are shared (benchmarks: saturation).

    Only when nothing else is writing to the connection: it takes the connection's send
    lock without waiting, or leaves the frame to the queue. When the socket takes only
    part of the frame, the lock stays taken and the client's task writes the rest
    (`finish`) before anything else can; if that task is cancelled first, the
    connection is aborted (in `Streams.send_frames`), since it holds half a frame. A
    socket that refuses (full, closed, reset) leaves the frame to the queue, where the
    task learns why.
    """

    def __init__(self, lock: trio.Semaphore, sock: socket.socket, subscriber: Subscriber,
                 message: Callable[[Frame], bytes], whole: bool = False) -> None:  # fmt: skip
        self.lock, self.sock, self.subscriber, self.message = lock, sock, subscriber, message
        self.whole = whole  # `finish` even when cancelled (see `write_whole`)

    def __call__(self, frame: Frame) -> bool:
        if self.lock.value == 0:
            return False
        data = self.message(frame)
        self.lock.acquire_nowait()
        try:
            sent = self.sock.send(data)
        except OSError:  # BlockingIOError included
            self.lock.release()
            return False
        if sent == len(data):
            self.lock.release()
            self.subscriber.delivered(frame)
        else:
            self.subscriber.written_in_part(frame, memoryview(data)[sent:])
        return True

    async def finish(self, stream: trio.abc.Stream, rest: memoryview) -> None:
        """Write the rest of a frame `__call__` wrote in part, then give the lock back."""
        try:
            if self.whole:
                await write_whole(stream.send_all, rest)
            else:
                await stream.send_all(rest)
        finally:
            self.lock.release()


def direct_writer(
    ws: WebSocketConnection, subscriber: Subscriber, message: Callable[[Frame], bytes],
    whole: bool = False,
) -> DirectWriter | None:  # fmt: skip
    access = direct_access(ws)
    return DirectWriter(*access, subscriber, message, whole) if access is not None else None


async def write_whole(write: Callable[[bytes | memoryview], Awaitable[None]],
                      data: bytes | memoryview) -> None:  # fmt: skip
    """Write ``data`` to the end even if the caller is cancelled meanwhile, within the
    caller's deadline (the send timeout of `Streams.send_frames`).

    For a connection that outlives the cancel: a ``/ws`` subscription ended while one of
    its frames is half out would leave half a frame on the wire, and every later message
    of the connection unreadable. Not started if the caller is already cancelled.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    with trio.CancelScope(shield=True, deadline=trio.current_effective_deadline()):
        await write(data)


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
