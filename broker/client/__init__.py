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

The parts: `api` (`Client`, `connect`), `connection` (the WebSocket and reconnecting),
`requests` (answers matched to requests), `frames` (decoding and queues), `handlers`,
`stats`, `errors`.
"""

from __future__ import annotations

from broker.client.api import Client, connect
from broker.client.errors import (
    AuthError,
    BrokerError,
    ConnectError,
    ConnectionLost,
    RequestTimeout,
)
from broker.client.frames import Frame, FrameStream, decode_frame
from broker.client.stats import ClientStats
from broker.protocol.results import CommandResult

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
