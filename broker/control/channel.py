"""The control channel: the broker's ZeroMQ ROUTER, one task receiving, any task sending.

Each worker connects a DEALER whose routing id is its camera id and speaks the msgpack
messages of `broker.protocol.control`. `RouterChannel.serve` is the one receive task:
it checks each message's frames, routing id and encoding, and hands the well-formed
ones to the control plane; anything else is counted by reason (`Complaints`) and
dropped. The edge-triggered FD and the kick after a send live in
`broker.support.zmqtrio`.

With camera keys (`broker.trust.curve`) a worker's camera is the one its key belongs
to, not its routing id: keyed workers let the ROUTER draw their route, and a message
whose key does not speak for its camera is refused before anything else looks at it.
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
from broker.trust.curve import CONTROL, CameraKeys

log = logging.getLogger("broker.control")

# Peers sending a larger frame are disconnected by ZeroMQ itself; messages between the
# protocol's limit and this one are received, counted and dropped.
MAX_FRAME_BYTES = 1024 * 1024

# What the receive task hands on: the routing id, the camera id it spells, the message.
Deliver = Callable[[bytes, str, dict[str, Any]], None]


def bind(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoints: Sequence[str],
    security: dict[int, int | bytes] | None = None,
    heartbeat: float = 1.0,
) -> tuple[zmq.Socket[bytes], list[str]]:
    """A ROUTER bound on ``endpoints``, with the endpoints actually bound. ``security``:
    the CURVE server options (`broker.trust.curve.server_options`); then keyed workers
    have routes the ROUTER draws, no peer may take over a route in use (no
    ``ROUTER_HANDOVER``), and ZMTP heartbeats every ``heartbeat`` seconds drop a
    connection that went silent."""
    options: dict[int, int | bytes] = {
        zmq.ROUTER_MANDATORY: 1,  # a send to a gone worker fails at once
        zmq.ROUTER_HANDOVER: 1,  # a restarted worker takes over its id
        zmq.MAXMSGSIZE: MAX_FRAME_BYTES,
    }
    if security:
        interval = max(100, int(heartbeat * 1000))
        options.update(security)
        options[zmq.ROUTER_HANDOVER] = 0
        options[zmq.HEARTBEAT_IVL] = interval
        options[zmq.HEARTBEAT_TIMEOUT] = 3 * interval
    return bound_socket(context, zmq.ROUTER, endpoints, options)


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

    def __init__(
        self, socket: zmq.Socket[bytes], complaints: Complaints, keys: CameraKeys | None = None
    ) -> None:
        self.socket = TrioSocket(socket, sends=True)
        self.complaints = complaints
        self.keys = keys  # with CURVE: a message is taken only from its camera's key

    async def serve(self, deliver: Deliver, faults: Faults) -> None:
        """Receive until cancelled. A bug in handling one message costs that message only
        (counted as ``control`` in faults)."""
        while True:
            parts = await self.socket.receive_multipart()
            with faults.contain("control"):
                camera = None
                if self.keys is not None:
                    camera = self.sender(parts, self.keys)
                    if camera is None:
                        continue
                self.take([part.bytes for part in parts], deliver, camera)

    def sender(self, parts: Sequence[zmq.Frame], keys: CameraKeys) -> str | None:
        """With CURVE: the camera whose key sent this message; None when it is refused
        (counted and logged): no key any more, or a routing id the peer chose that is
        not its key's camera. A routing id the ROUTER drew (a zero byte first) is fine."""
        camera, refusal = keys.sender(parts[-1])
        identity = parts[0].bytes
        if camera is not None and identity[:1] != b"\x00" and identity != camera.encode():
            refusal = "wrong_camera"
        if not refusal:
            return camera
        claimed = identity.decode("ascii", "replace")
        shown = claimed if CAMERA_ID.fullmatch(claimed) else "a drawn routing id"
        keys.refused(CONTROL, refusal, f"a message on route {shown}")
        return None

    def take(self, parts: list[bytes], deliver: Deliver, camera: str | None = None) -> None:
        """One message from the ROUTER; anything malformed is counted by reason (the
        codec's `ControlError.reason` for what it refuses) and dropped. ``camera``: the
        sender's camera when its key told (CURVE); else the routing id spells it."""
        malformed = self.complaints.malformed
        if len(parts) != 2:
            malformed("bad_frames", f"a message of {len(parts) - 1} frames (expected 1)")
            return
        identity, payload = parts
        if camera is None:
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
