"""The control channel: the broker's ZeroMQ ROUTER, one task receiving, any task sending.

Each worker connects a DEALER whose routing id is its camera id and speaks the msgpack
messages of `broker.protocol.control`. `RouterChannel.serve` is the one receive task:
it checks each message's frames, routing id and encoding, and hands the well-formed
ones to the control plane; anything else is counted by reason (`Complaints`) and
dropped. The edge-triggered FD and the kick after a send live in
`broker.support.zmqtrio`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from broker.protocol import control as protocol
from broker.protocol.wire import CAMERA_ID
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.zmqtrio import TrioSocket, bound_socket

log = logging.getLogger("broker.control")

# Peers sending a larger frame are disconnected by ZeroMQ itself; messages between the
# protocol's limit and this one are received, counted and dropped.
MAX_FRAME_BYTES = 1024 * 1024

# What the receive task hands on: the routing id, the camera id it spells, the message.
Deliver = Callable[[bytes, str, dict[str, Any]], None]


def bind(
    context: zmq.Context[zmq.Socket[bytes]], endpoints: Sequence[str]
) -> tuple[zmq.Socket[bytes], list[str]]:
    """A ROUTER bound on ``endpoints``, with the endpoints actually bound."""
    return bound_socket(
        context,
        zmq.ROUTER,
        endpoints,
        {
            zmq.ROUTER_MANDATORY: 1,  # a send to a gone worker fails at once
            zmq.ROUTER_HANDOVER: 1,  # a restarted worker takes over its id
            zmq.MAXMSGSIZE: MAX_FRAME_BYTES,
        },
    )


class Complaints:
    """What control drops or refuses, counted by reason (``errors`` in /healthz and the
    metrics) and logged at most once per reason per interval: keyed by reason only, so a
    peer inventing ids cannot invent log lines."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.throttle = LogThrottle(log)

    def malformed(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.throttle.warning(
            reason, "control: dropped a malformed message (%s): %s", reason, detail
        )


class RouterChannel:
    """The bound ROUTER: `serve` in one task; `send` from any."""

    def __init__(self, socket: zmq.Socket[bytes], complaints: Complaints) -> None:
        self.socket = TrioSocket(socket, sends=True)
        self.complaints = complaints

    async def serve(self, deliver: Deliver, faults: Faults) -> None:
        """Receive until cancelled. A bug in handling one message costs that message only
        (counted as ``control`` in faults)."""
        while True:
            parts = await self.socket.receive_multipart()
            with faults.contain("control"):
                self.take([part.bytes for part in parts], deliver)

    def take(self, parts: list[bytes], deliver: Deliver) -> None:
        """One message from the ROUTER; anything malformed is counted by reason (the
        codec's `ControlError.reason` for what it refuses) and dropped."""
        malformed = self.complaints.malformed
        if len(parts) != 2:
            malformed("bad_frames", f"a message of {len(parts) - 1} frames (expected 1)")
            return
        identity, payload = parts
        camera = identity.decode("ascii", "replace")
        if not CAMERA_ID.fullmatch(camera):
            malformed("bad_identity", f"routing id {identity[:40]!r} is not a camera id")
            return
        try:
            message = protocol.decode(payload)
        except protocol.ControlError as exc:
            malformed(exc.reason, f"worker {camera}: {exc}")
            return
        kind = message["type"]
        if kind in ("command", "hello_request"):
            malformed(
                "unexpected_type", f"worker {camera}: sent a {kind}, which only the broker sends"
            )
            return
        deliver(identity, camera, message)

    def send(self, identity: bytes, payload: bytes) -> None:
        """Send now or raise `zmq.ZMQError` (EHOSTUNREACH: no such peer; EAGAIN: its queue
        is full). Never blocks."""
        self.socket.send_multipart([identity, payload])

    def send_quietly(self, identity: bytes, payload: bytes) -> None:
        """A send whose failure is not news: a gone peer is noticed by its silence."""
        try:
            self.send(identity, payload)
        except zmq.ZMQError as exc:
            log.debug("control: send to %r failed: %s", identity, exc)

    def close(self) -> None:
        self.socket.close()
