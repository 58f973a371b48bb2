"""One camera per WebSocket: ``/cameras/{id}`` (and ``/`` for the default camera), the
endpoint the Grafana panel and the viewer page use. Each binary message is one whole
image, built once per frame (`Frame.websocket_message`) and shared by every client;
frames go out through `broker.serve.delivery`, written straight from `Hub.publish` while
the client keeps up. What the client sends is read and ignored.
"""

from __future__ import annotations

import functools
import logging

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from broker.core.frame import Frame
from broker.core.subscriber import Subscriber, SubscriptionEnded
from broker.serve.delivery import Delivery, direct_writer, fit_unsent_bound
from broker.serve.wsframes import close_going_away, send_prebuilt, transport

log = logging.getLogger("broker.server")


async def serve(
    delivery: Delivery,
    ws: WebSocketConnection,
    camera_id: str,
    max_fps: float | None,
    client: str,
    browser: bool = False,
) -> None:
    """Stream one camera's images to an accepted WebSocket until either side ends: in
    the camera's own format, byte for byte, or with ``browser`` (``?format=jpeg``, the
    viewer page) as JPEGs (derived, for a camera of a raw format)."""
    subscriber = delivery.hub.subscribe(
        camera_id, client, delivery.config.queue_depth, browser=browser
    )
    if not browser:
        fit_unsent_bound(ws, subscriber.camera)
    cap = f" (at most {max_fps:g} fps)" if max_fps else ""
    log.info("client %s: watching camera %s over WebSocket%s", client, camera_id, cap)
    try:
        await _stream_frames(delivery, ws, subscriber, max_fps)
    finally:
        delivery.hub.unsubscribe(subscriber)
        log.info(
            "client %s: left camera %s (sent %d frames, dropped %d)",
            client,
            camera_id,
            subscriber.sent,
            subscriber.dropped,
        )


async def _stream_frames(
    delivery: Delivery, ws: WebSocketConnection, subscriber: Subscriber, max_fps: float | None
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
        try:
            await delivery.send_frames(
                functools.partial(send_prebuilt, ws),
                transport(ws),
                subscriber,
                max_fps,
                Frame.websocket_message,
                direct_writer(ws, subscriber, Frame.websocket_message),
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except SubscriptionEnded:
            await close_going_away(ws)
        except trio.Cancelled:
            if ws.closed is None:  # we are shutting down, not the client leaving
                await close_going_away(ws)
            raise
        nursery.cancel_scope.cancel()


async def _until_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Read (and ignore) what a viewer sends until it closes, then stop its stream."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        scope.cancel()
