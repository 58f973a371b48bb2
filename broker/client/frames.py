"""Frames: decoding a binary ``/ws`` message, one drop-oldest queue per subscribed
camera, and the ``async for`` that reads them.

The queues are the broker's own `DropOldestQueue`: a consumer slower than the camera
gets fewer, newer frames, and what was pushed out is counted. One queue per camera, so
a fast camera cannot push a slow one's frames out; arrival numbers keep the order
across cameras.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import trio

from broker.client.errors import BrokerError, Message
from broker.core.queue import DropOldestQueue
from broker.protocol import mux


@dataclass(frozen=True, slots=True)
class Frame:
    """One image of a subscribed camera, as its binary message carried it."""

    camera: str
    seq: int
    captured_at: float  # Unix seconds, from the worker's clock
    format: str  # jpeg, png, webp, bmp, tiff or lz4 (broker.protocol.wire.FORMATS)
    width: int
    height: int
    data: bytes
    received_at: float  # Unix seconds, this machine's clock
    header: Message = field(default_factory=dict, repr=False)  # the whole JSON header

    @property
    def latency(self) -> float:
        """Capture to receipt, in seconds (meaningful when both clocks are synchronised)."""
        return self.received_at - self.captured_at

    @property
    def placeholder(self) -> bool:
        """A generated "No Data" image, sent while the camera is offline."""
        return bool(self.header.get("placeholder", False))


def decode_frame(message: bytes, received_at: float | None = None) -> Frame:
    """A binary ``/ws`` message (`broker.protocol.mux`) as a `Frame`; ValueError if bad."""
    decoded = mux.decode(message)  # MuxError is a ValueError
    return Frame(
        camera=decoded.camera,
        seq=decoded.seq,
        captured_at=decoded.captured_at,
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        data=decoded.image,
        received_at=time.time() if received_at is None else received_at,
        header=dict(decoded.header),
    )


class FrameQueues:
    """The frames received and not yet read, per camera, and who waits for them."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.dropped = 0  # frames pushed out before anyone read them
        self.gaps = 0  # frames missing between consecutive sequence numbers
        self.failure: BrokerError | None = None  # why the client gave up, if it did
        self.closed = False
        self._queues: dict[str, DropOldestQueue[tuple[int, Frame]]] = {}
        self._arrivals = itertools.count()  # orders frames across cameras
        self._last_seq: dict[str, int] = {}
        self._ready = trio.Event()

    def open(self, camera: str) -> None:
        """Take frames of ``camera`` from now on (kept if it already has a queue)."""
        if camera not in self._queues:
            self._queues[camera] = DropOldestQueue(self.depth)

    def forget(self, camera: str) -> None:
        """Take no more frames of ``camera``; those queued are discarded."""
        self._queues.pop(camera, None)
        self._last_seq.pop(camera, None)

    def new_connection(self) -> None:
        """Frames missed while away are not gaps in a stream."""
        self._last_seq.clear()

    def put(self, frame: Frame) -> bool:
        """Queue ``frame``; False when its camera has no queue (a frame in flight when
        we unsubscribed)."""
        queue = self._queues.get(frame.camera)
        if queue is None:
            return False
        last = self._last_seq.get(frame.camera)
        if last is not None and frame.seq > last + 1:
            self.gaps += frame.seq - last - 1
        self._last_seq[frame.camera] = frame.seq
        if queue.put((next(self._arrivals), frame)):
            self.dropped += 1
        self._wake()
        return True

    def next(self, camera: str | None) -> Frame | None:
        """The oldest frame of ``camera`` (or of any camera), or None."""
        if camera is not None:
            queue = self._queues.get(camera)
        else:  # the queue whose head arrived first
            waiting = [q for q in self._queues.values() if len(q)]
            queue = min(waiting, key=_arrival_of_head) if waiting else None
        item = queue.get() if queue is not None else None
        return item[1] if item is not None else None

    def close(self) -> None:
        """The client is closing: readers end once the queues are empty."""
        self.closed = True
        self._wake()

    def fail(self, reason: BrokerError) -> None:
        """The client gave up: readers get ``reason`` once the queues are empty."""
        self.failure = reason
        self._wake()

    async def wait(self) -> None:
        """Until a frame arrives or the stream ends."""
        await self._ready.wait()

    def _wake(self) -> None:
        self._ready.set()
        self._ready = trio.Event()


def _arrival_of_head(queue: DropOldestQueue[tuple[int, Frame]]) -> int:
    head = queue.peek()
    return head[0] if head is not None else -1


class FrameStream:
    """``async for frame in client.frames()``; see `Client.frames`."""

    def __init__(self, queues: FrameQueues, camera: str | None) -> None:
        self._queues = queues
        self._camera = camera

    def __aiter__(self) -> FrameStream:
        return self

    async def __anext__(self) -> Frame:
        queues = self._queues
        await trio.lowlevel.checkpoint()  # before taking a frame, so a cancel loses none
        while True:
            frame = queues.next(self._camera)
            if frame is not None:
                return frame
            if queues.failure is not None:
                raise queues.failure
            if queues.closed:
                raise StopAsyncIteration
            await queues.wait()
