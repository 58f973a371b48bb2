"""Feeding viewers: the send loop every frame output shares (one camera per WebSocket,
MJPEG, each ``/ws`` subscription), and how a sender waits for what it sends.

Each client reads from its own drop-oldest queue (`broker.core.subscriber.Subscriber`)
in its own task; a client that takes no frame within ``server.send_timeout`` is cut
off, since a frame may then be half on the wire.

The core knows nothing of tasks: a sender's `Waiter` is installed as its subscriber's
``wake``, and while the sender waits with nothing queued, its `DirectWriter` as the
subscriber's ``direct`` (`broker.core.subscriber.DirectWrite`: `Hub.publish` writes the
frame itself). A ``/ws`` connection waits for events the same way (`next_event`).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from trio_websocket import WebSocketConnection

from broker.config import ServerConfig
from broker.core.camera import Camera
from broker.core.events import Listener, ListenerClosed
from broker.core.frame import Frame, Message
from broker.core.hub import Hub
from broker.core.subscriber import Subscriber, SubscriptionEnded
from broker.core.transcode import needs_jpeg
from broker.protocol.events import Event
from broker.protocol.wire import raw_bytes
from broker.serve.wsframes import direct_access, raise_unsent_bound, send_parts

log = logging.getLogger("broker.server")

# The server bounds what the kernel holds unsent per client at 64 KiB (server.py); for
# frames of raw pixels that is a few hundred wake-ups per 4K frame per viewer, the pipe
# drained each time before it is filled again. Their viewers' bound is a fraction of a
# frame instead: still a small part of one frame behind, at most.
UNSENT_FRACTION = 16
MIN_UNSENT = 64 * 1024
T = TypeVar("T")


def unsent_bound(camera: Camera) -> int | None:
    """The unsent bytes a viewer of ``camera``'s own frames may leave to the kernel,
    when above the server's 64 KiB: 1/16 of a raw frame (1.5 MB at 4K)."""
    if not needs_jpeg(camera.format):
        return None
    bound = raw_bytes(*camera.size) // UNSENT_FRACTION
    return bound if bound > MIN_UNSENT else None


def fit_unsent_bound(ws: WebSocketConnection, camera: Camera) -> None:
    """Raise ``ws``'s unsent bound for a viewer of ``camera`` (`unsent_bound`)."""
    bound = unsent_bound(camera)
    if bound is not None:
        raise_unsent_bound(ws, bound)


class Delivery:
    """What every frame output shares: the hub, the server settings, and the count of
    clients cut off for being too slow."""

    def __init__(self, hub: Hub, config: ServerConfig) -> None:
        self.hub = hub
        self.config = config
        self.slow_disconnects = 0

    async def send_frames(
        self,
        write: Callable[[Message], Awaitable[None]],
        stream: trio.abc.Stream,
        subscriber: Subscriber,
        max_fps: float | None,
        message: Callable[[Frame], Message],
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
        waiter = Waiter(subscriber, direct)
        # One cancel scope for the whole stream, armed only while a frame is being
        # written: cheaper than a scope per frame on the hot path.
        with trio.CancelScope() as timer:
            while True:
                timer.deadline = math.inf
                frame = await waiter.next_frame(newest=bool(interval))
                if direct is not None and direct.inflight is not None:
                    rest = direct.inflight[1]
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
                        direct.inflight = None
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
            "client %s: camera %s: took no frame within %.1f s; disconnected (sent %d, dropped %d)",
            subscriber.client,
            subscriber.camera.id,
            send_timeout,
            subscriber.sent,
            subscriber.dropped,
        )
        await trio.aclose_forcefully(stream)


class Waiter:
    """How one sender task waits for its subscriber's next frame; installed as the
    subscriber's ``wake``.

    A clearable event for its one task, built as ``trio.Event`` is (a trio.Event cannot
    be cleared, so each wait would need a new one): a wait allocates nothing, a wake-up
    costs what ``trio.Event.set`` does. It is cleared only just before the task parks,
    after it has looked at the queue, so no wake-up is lost."""

    __slots__ = ("_abort", "_task", "_woken", "direct", "subscriber")

    def __init__(self, subscriber: Subscriber, direct: DirectWriter | None = None) -> None:
        self.subscriber = subscriber
        self.direct = direct
        self._woken = False
        self._task: trio.lowlevel.Task | None = None  # parked, until woken or cancelled
        self._abort = self._cancelled  # bound once, not per wait
        subscriber.wake = self.wake

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            task = self._task
            if task is not None:
                self._task = None
                trio.lowlevel.reschedule(task)

    def _cancelled(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def next_frame(self, newest: bool = False) -> Frame:
        """Wait for a frame: the oldest queued, or with ``newest`` the newest; a capped
        client (``interval``) waits for its due time too. While it waits with nothing
        queued, frames go to ``direct`` first; one it wrote only in part is returned
        with the rest in its ``inflight``, which the caller must write before anything
        else."""
        subscriber = self.subscriber
        while True:
            if subscriber.closed:
                raise SubscriptionEnded(subscriber.camera.id)
            if not subscriber.interval or time.monotonic() >= subscriber.next_due:
                frame = subscriber.queue.get_newest() if newest else subscriber.queue.get()
                if frame is not None:
                    return frame
            self._woken = False
            subscriber.direct = None if subscriber.interval else self.direct
            self._task = trio.lowlevel.current_task()
            try:
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            finally:
                subscriber.direct = None
            direct = self.direct
            if direct is not None and direct.inflight is not None:
                return direct.inflight[0]


class DirectWriter:
    """Writes a frame to an idle WebSocket client from `Hub.publish` itself: one
    non-blocking ``send`` instead of waking the client's task, the largest cost per
    frame per client once the bytes are shared (benchmarks: saturation); a message of
    several buffers (`broker.core.frame.Message`) goes in one ``sendmsg``. The core's
    `broker.core.subscriber.DirectWrite`.

    Only when nothing else is writing to the connection: it takes the connection's send
    lock without waiting, or leaves the frame to the queue. When the socket takes only
    part of the frame, the lock stays taken, the rest waits in `inflight` and the
    client's task writes it (`finish`) before anything else can; if that task is
    cancelled first, the connection is aborted (in `Delivery.send_frames`), since it
    holds half a frame. A socket that refuses (full, closed, reset) leaves the frame to
    the queue, where the task learns why.

    Over TLS ``sock`` is the connection's non-blocking ``ssl.SSLSocket``
    (`broker.serve.tlsstream.TlsStream`): ``send`` encrypts and writes a whole buffer or
    raises "want write", after which OpenSSL must be given the same bytes again, so that
    whole buffer begins the rest, and `TlsStream.send_all` finishes it.
    """

    __slots__ = ("inflight", "lock", "message", "sock", "subscriber", "tls", "whole")

    def __init__(
        self,
        lock: trio.Semaphore,
        sock: socket.socket,
        subscriber: Subscriber,
        message: Callable[[Frame], Message],
        whole: bool = False,
    ) -> None:
        self.lock, self.sock, self.subscriber, self.message = lock, sock, subscriber, message
        self.whole = whole  # `finish` even when cancelled (see `write_whole`)
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.inflight: tuple[Frame, Message] | None = None  # written in part

    def __call__(self, frame: Frame) -> bool:
        if self.lock.value == 0:
            return False
        parts = self.message(frame)
        self.lock.acquire_nowait()
        try:
            rest = self._send_tls(parts) if self.tls else self._send(parts)
        except OSError:  # BlockingIOError included: nothing was sent
            self.lock.release()
            return False
        if not rest:
            self.lock.release()
            self.subscriber.delivered(frame)
        else:  # the sender must write the rest next
            subscriber = self.subscriber
            subscriber.direct = None
            self.inflight = (frame, rest)
            subscriber.wake()
        return True

    def _send(self, parts: Message) -> Message:
        """Write what the socket takes of ``parts`` (one ``sendmsg``); the rest."""
        sent = self.sock.send(parts[0]) if len(parts) == 1 else self.sock.sendmsg(parts)
        return rest_after(parts, sent)

    def _send_tls(self, parts: Message) -> Message:
        """Encrypt and write ``parts`` one by one (an ``ssl.SSLSocket`` has no
        ``sendmsg``); the rest. After a "want write" OpenSSL has that part in hand and
        must be offered the same bytes again: all of them are in the rest. Raises
        OSError only when nothing was sent."""
        for index, part in enumerate(parts):
            try:
                sent = self.sock.send(part)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return parts[index:]
            except OSError:
                if index == 0:
                    raise
                return parts[index:]  # the sender meets the error again
            if sent < len(part):
                return rest_after(parts[index:], sent)
        return ()

    async def finish(self, stream: trio.abc.Stream, rest: Message) -> None:
        """Write the rest of a frame `__call__` wrote in part, then give the lock back."""
        try:
            if self.whole:
                await write_whole(functools.partial(send_parts, stream), rest)
            else:
                await send_parts(stream, rest)
        finally:
            self.lock.release()


def rest_after(parts: Message, sent: int) -> Message:
    """What remains of ``parts`` once their first ``sent`` bytes are written."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return (memoryview(part)[sent:], *parts[index + 1 :])
        sent -= len(part)
    return ()


async def write_whole(write: Callable[[T], Awaitable[None]], data: T) -> None:
    """Write ``data`` to the end even if the caller is cancelled meanwhile, within the
    caller's deadline (the send timeout of `Delivery.send_frames`).

    For a connection that outlives the cancel: a ``/ws`` subscription ended while one of
    its frames is half out would leave half a frame on the wire, and every later message
    of the connection unreadable. Not started if the caller is already cancelled.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    with trio.CancelScope(shield=True, deadline=trio.current_effective_deadline()):
        await write(data)


async def next_event(listener: Listener) -> Event:
    """The listener's oldest queued event, waiting for one; `ListenerClosed` once it is
    unlistened."""
    while True:
        if listener.closed:
            raise ListenerClosed
        event = listener.get_nowait()
        if event is not None:
            await trio.lowlevel.checkpoint()
            return event
        ready = trio.Event()
        listener.wake = ready.set
        await ready.wait()


def direct_writer(
    ws: WebSocketConnection,
    subscriber: Subscriber,
    message: Callable[[Frame], Message],
    whole: bool = False,
) -> DirectWriter | None:
    """A `DirectWriter` for ``ws``, or None when its internals do not allow one
    (`broker.serve.wsframes.direct_access`)."""
    access = direct_access(ws)
    return DirectWriter(*access, subscriber, message, whole) if access is not None else None
