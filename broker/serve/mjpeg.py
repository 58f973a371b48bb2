"""MJPEG: ``/cameras/{id}/mjpeg``, one ``multipart/x-mixed-replace`` response per client
(an ``<img>`` in a browser or a Grafana Text panel shows it with no plugin). Each part is
built once per frame (`Frame.mjpeg_part`) and shared by every client, and goes out
through the same drop-oldest queue and send timeout as WebSocket
(`broker.serve.delivery`). The body ends when the connection does.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import trio

from broker.core.frame import MJPEG_BOUNDARY, Frame
from broker.core.subscriber import SubscriptionEnded
from broker.serve.delivery import Delivery
from broker.serve.wsframes import send_parts

log = logging.getLogger("broker.server")

MJPEG_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    f"Content-Type: multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}\r\n"
    "Cache-Control: no-store\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Connection: close\r\n\r\n"  # the body ends when the connection does
).encode()


async def serve(
    delivery: Delivery,
    stream: trio.abc.Stream,
    camera_id: str,
    max_fps: float | None,
    client: str,
    head_only: bool,
) -> None:
    """``multipart/x-mixed-replace`` until the client leaves."""
    with trio.move_on_after(delivery.config.send_timeout):
        await stream.send_all(MJPEG_HEAD)
    if head_only:
        return
    hub = delivery.hub
    # A browser image: JPEGs derived from each frame for a camera of a raw format.
    subscriber = hub.subscribe(camera_id, client, delivery.config.queue_depth, "mjpeg", True)
    log.info("client %s: watching camera %s over MJPEG", client, camera_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_eof, stream, nursery.cancel_scope)
            await delivery.send_frames(
                functools.partial(send_parts, stream), stream, subscriber, max_fps, Frame.mjpeg_part
            )
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, SubscriptionEnded):
        pass  # the client or the camera went away (raised in a nursery: a group)
    finally:
        hub.unsubscribe(subscriber)
        log.info(
            "client %s: left camera %s (sent %d frames, dropped %d)",
            client,
            camera_id,
            subscriber.sent,
            subscriber.dropped,
        )


async def _until_eof(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """Ignore what an MJPEG client sends; when it closes, stop its stream."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()
