"""Frames in: a ZMQ SUB socket bound on every ingest endpoint, drained continuously.

Workers publish (PUB, connect); the broker binds one SUB socket on all endpoints and
receives as fast as frames arrive, so ZeroMQ never holds stale frames: freshness is
decided by each client's drop-oldest queue, not by queues we cannot see.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import zmq

from broker.config import Config
from broker.core.frame import Frame
from broker.core.hub import Hub, Outcome
from broker.protocol import wire
from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.zmqtrio import TrioSocket, bound_socket
from broker.trust.curve import INGEST, CameraKeys

log = logging.getLogger("broker.ingest")


class IngestStats:
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        # By WireError.reason, plus "unknown_camera", and with camera keys the
        # refusals of broker.trust.curve (no_curve, unknown_key, wrong_camera...).
        self.errors: Counter[str] = Counter()

    def as_dict(self) -> dict[str, object]:
        return {"frames": self.frames, "bytes": self.bytes, "errors": dict(self.errors)}


def largest_frame_limit(config: Config) -> int:
    """The largest frame any configured camera may send (`wire.frame_limit`), taking
    each camera as if it sent a raw format at its configured size (its format may change
    live): the ZeroMQ message cap and the upload body cap."""
    base = config.ingest.max_frame_bytes
    return max(
        [base]
        + [wire.frame_limit("bmp", camera.width, camera.height, base) for camera in config.cameras]
    )


def max_part_bytes(max_frame_bytes: int) -> int:
    """The ``ZMQ_MAXMSGSIZE`` of the ingest socket. libzmq applies it to each message
    part (ZMTP frame) as its size arrives: the payload is the largest part, so a frame
    just over ``max_frame_bytes`` is still received (and counted ``oversize``), while a
    peer declaring a 4 GiB part is disconnected before anything is buffered.
    ``max_frame_bytes``: `largest_frame_limit`."""
    return max_frame_bytes + wire.MAX_HEADER_BYTES


def bind(
    context: zmq.Context,
    endpoints: Sequence[str],
    max_frame_bytes: int = 16 * 1024 * 1024,
    security: dict[int, int | bytes] | None = None,
) -> tuple[zmq.Socket, list[str]]:
    """A SUB socket bound on ``endpoints``; returns it with the endpoints actually bound
    (``tcp://host:*`` picks a free port). ``security``: the CURVE server options
    (`broker.trust.curve.server_options`), set before binding."""
    return bound_socket(
        context,
        zmq.SUB,
        endpoints,
        {
            **(security or {}),
            zmq.SUBSCRIBE: b"",
            zmq.MAXMSGSIZE: max_part_bytes(max_frame_bytes),
        },
    )


async def run_ingest(
    socket: zmq.Socket,
    hub: Hub,
    stats: IngestStats,
    max_frame_bytes: int,
    observe_latency: Callable[[str, float], None] | None = None,
    faults: Faults | None = None,
    max_width: int = wire.MAX_DIMENSION,
    max_height: int = wire.MAX_DIMENSION,
    keys: CameraKeys | None = None,
) -> None:
    """Receive frames until cancelled; closes ``socket`` on the way out. A message that
    trips a bug costs that message only (counted under ``faults`` as ``ingest``). With
    ``keys`` (CURVE), a frame is taken only from its camera's key."""
    faults = faults if faults is not None else Faults()
    receiver = TrioSocket(socket)
    intake = Intake(hub, stats, max_frame_bytes, max_width, max_height, observe_latency, keys)
    try:
        while True:
            parts = await receiver.receive_multipart()
            with faults.contain("ingest"):
                intake.take(parts)
    finally:
        receiver.close()


class Intake:
    """Checks one received message and publishes its frame; synchronous."""

    def __init__(
        self,
        hub: Hub,
        stats: IngestStats,
        max_frame_bytes: int,
        max_width: int = wire.MAX_DIMENSION,
        max_height: int = wire.MAX_DIMENSION,
        observe_latency: Callable[[str, float], None] | None = None,
        keys: CameraKeys | None = None,
    ) -> None:
        self.hub, self.stats = hub, stats
        self.keys = keys
        self.max_frame_bytes, self.max_width, self.max_height = (
            max_frame_bytes,
            max_width,
            max_height,
        )
        self.observe_latency = observe_latency
        # Keyed by reason only: a peer inventing camera ids must not invent log lines.
        self.complaints = LogThrottle(log)

    def take(self, parts: Sequence[zmq.Frame]) -> None:
        stats = self.stats
        try:
            header, payload = wire.decode(
                [p.buffer for p in parts], self.max_frame_bytes, self.max_width, self.max_height
            )
        except wire.WireError as error:
            stats.errors[error.reason] += 1
            self.complaints.warning(
                error.reason, "ingest: rejected a malformed message (%s): %s", error.reason, error
            )
            return
        if self.keys is not None:
            refusal = self.keys.refusal(parts[-1], header.camera)
            if refusal is not None:
                self.keys.refused(INGEST, refusal, f"a frame for {header.camera}")
                return
        frame = Frame.received(
            header.camera,
            header.seq,
            header.captured_at,
            header.width,
            header.height,
            header.format,
            payload,
        )
        outcome = self.hub.publish(frame)
        if outcome is not Outcome.LIVE:
            if outcome is not Outcome.UNKNOWN:
                return  # counted by the hub
            stats.errors["unknown_camera"] += 1
            self.complaints.warning(
                "unknown_camera",
                "ingest: frames from cameras not in the config are rejected (set "
                "ingest.accept_unknown_cameras to accept them); this one from %s",
                header.camera,
            )
            return
        stats.frames += 1
        stats.bytes += len(payload)
        if self.observe_latency is not None:
            self.observe_latency(header.camera, time.time() - header.captured_at)
