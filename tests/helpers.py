"""Shared test helpers: a real in-process broker, a ZeroMQ publisher, realistic JPEGs,
frames as a viewer receives them, raw HTTP requests and an MJPEG reader."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache

import cv2
import numpy as np
import trio
import zmq
from trio_websocket import WebSocketConnection

from broker import config as configuration
from broker.app import Broker
from broker.protocol import stamp, wire


@cache
def sample_jpeg(width: int = 1280, height: int = 720, quality: int = 80) -> bytes:
    """A JPEG with natural-image-like detail (about 100-200 KB at 720p)."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 3, (height, width, 3), dtype=np.uint8))
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def config(cameras: str = '[[cameras]]\nid = "a"\n', **sections: str) -> configuration.Config:
    server = sections.get("server", "")
    ingest = sections.get("ingest", "")
    control = sections.get("control", "")
    tables = sections.get("retention", "")  # whole extra tables, e.g. "[retention]\n..."
    return configuration.parse(
        f'[server]\nlisten = "127.0.0.1:0"\n{server}\n'
        f'[ingest]\nendpoints = ["tcp://127.0.0.1:*"]\n{ingest}\n'
        f'[control]\nendpoints = []\nstate_file = ""\n{control}\n{tables}\n{cameras}'
    )


@asynccontextmanager
async def running_broker(cfg: configuration.Config) -> AsyncIterator[Broker]:
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(Broker(cfg).run)
        try:
            yield broker
        finally:
            nursery.cancel_scope.cancel()


class Publisher:
    """A worker stand-in: publishes stamped frames over a real ZMQ PUB socket."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.seq = 0

    def send(self, camera: str, jpeg: bytes, width: int = 1280, height: int = 720) -> None:
        now = time.time()
        header = wire.FrameHeader(camera, self.seq, now, width, height)
        self.socket.send_multipart(wire.encode(header, stamp.stamp(jpeg, self.seq, now)))
        self.seq += 1

    def send_raw(self, parts: Sequence[wire.Buffer]) -> None:
        self.socket.send_multipart(parts)

    async def stream(
        self,
        camera: str,
        fps: float,
        jpeg: bytes | None = None,
        width: int = 1280,
        height: int = 720,
    ) -> None:
        jpeg = jpeg or sample_jpeg(width, height)
        next_due = trio.current_time()
        while True:
            self.send(camera, jpeg, width, height)
            next_due += 1 / fps
            await trio.sleep_until(next_due)

    def close(self) -> None:
        self.context.destroy(linger=0)


@asynccontextmanager
async def publisher(broker: Broker) -> AsyncIterator[Publisher]:
    pub = Publisher(broker.ingest_endpoints[0])
    try:
        await trio.sleep(0.2)  # let the PUB connect, or its first frames are dropped
        yield pub
    finally:
        pub.close()


# -- what a viewer receives --------------------------------------------------------


async def binary_message(ws: WebSocketConnection) -> bytes:
    """The next message on ``ws``, a frame: a text message fails the test."""
    message = await ws.get_message()
    assert isinstance(message, bytes), f"a text message where a frame was due: {message[:200]!r}"
    return message


def read_stamp(image: wire.Buffer) -> tuple[int, float]:
    """The (seq, capture time) stamp of a worker's frame: an unstamped image (a "No Data"
    image) fails the test. `stamp.read` itself where either may come."""
    found = stamp.read(image)
    assert found is not None, "a frame without a capture stamp"
    return found


# -- raw HTTP -------------------------------------------------------------------------


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes; returns status, headers and body of the reply."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
                if b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    headers = dict(
                        line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
                    )
                    if len(body) >= int(headers.get("content-length", 0)):
                        break
    status = int(head.split(b" ")[1])
    return status, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


class MjpegReader:
    """Reads a multipart/x-mixed-replace response part by part, at an optional pace."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int, path: str) -> tuple[MjpegReader, bytes]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reader = cls(stream)
        while b"\r\n\r\n" not in reader.buffer:
            reader.buffer += await stream.receive_some(65536)
        head, _, rest = bytes(reader.buffer).partition(b"\r\n\r\n")
        reader.buffer = bytearray(rest)
        return reader, head

    async def part(self, pace: float = 0.0) -> tuple[dict[str, str], bytes]:
        while True:
            if b"\r\n\r\n" in self.buffer:
                head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                assert lines[0] == "--camera-broker-frame", lines
                headers = dict(line.lower().split(": ", 1) for line in lines[1:])
                length = int(headers["content-length"])
                if len(rest) >= length + 2:
                    assert rest[length : length + 2] == b"\r\n"
                    self.buffer = bytearray(rest[length + 2 :])
                    return headers, rest[:length]
            data = await self.stream.receive_some(16384)
            if not data:
                raise EOFError
            self.buffer += data
            if pace:
                await trio.sleep(len(data) / pace)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
