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

from broker.boundary import Faults
from broker.frames import Frame
from broker.hub import Hub
from broker.ratelimit import RateLimitedLog
from broker.zmqtrio import TrioReceiver, bound_socket
from cameras import wire

log = logging.getLogger("broker.ingest")


class IngestStats:
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.errors: Counter[str] = Counter()  # by WireError.reason, plus "unknown_camera"

    def as_dict(self) -> dict[str, object]:
        return {"frames": self.frames, "bytes": self.bytes, "errors": dict(self.errors)}


def bind(context: zmq.Context, endpoints: Sequence[str]) -> tuple[zmq.Socket, list[str]]:
    """A SUB socket bound on ``endpoints``; returns it with the endpoints actually bound
    (``tcp://host:*`` picks a free port)."""
    return bound_socket(context, zmq.SUB, endpoints, {zmq.SUBSCRIBE: b""})


async def run_ingest(
    socket: zmq.Socket,
    hub: Hub,
    stats: IngestStats,
    max_frame_bytes: int,
    observe_latency: Callable[[str, float], None] | None = None,
    faults: Faults | None = None,
) -> None:
    """Receive frames until cancelled; closes ``socket`` on the way out."""
    receiver = TrioReceiver(socket)
    complaints = RateLimitedLog(log)
    try:
        while True:
            parts = await receiver.receive_multipart()
            try:
                header, payload = wire.decode([p.buffer for p in parts], max_frame_bytes)
            except wire.WireError as error:
                stats.errors[error.reason] += 1
                complaints.warning(
                    error.reason,
                    "ingest: rejected a malformed message (%s): %s",
                    error.reason,
                    error,
                )
                continue
            frame = Frame(
                camera=header.camera,
                seq=header.seq,
                captured_at=header.captured_at,
                width=header.width,
                height=header.height,
                format=header.format,
                data=payload,
                received_at=time.monotonic(),
            )
            if not hub.publish(frame):
                stats.errors["unknown_camera"] += 1
                complaints.warning(
                    "unknown:" + header.camera,
                    "ingest: camera %s: frame rejected, the camera is not in the config "
                    "(set ingest.accept_unknown_cameras to accept it)",
                    header.camera,
                )
                continue
            stats.frames += 1
            stats.bytes += len(payload)
            if observe_latency is not None:
                observe_latency(header.camera, time.time() - header.captured_at)
    finally:
        receiver.close()
