"""Proving that bad input leaves everyone else alone: a real viewer in a thread that
counts the frames it receives while a test attacks the broker.

    with Viewer(broker.port, "cam") as viewer:
        start = time.monotonic()
        ...attack...
        viewer.assert_kept(fps=10, since=start)

The viewer is a blocking raw WebSocket client (no library between it and the socket),
so what it measures is what the broker delivered.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Self

from benchmarks.churn import parse_server_frame


class Viewer(threading.Thread):
    """A per-camera WebSocket viewer that records when each frame arrived."""

    def __init__(self, port: int, camera: str, query: str = "", host: str = "127.0.0.1") -> None:
        super().__init__(name=f"viewer:{camera}", daemon=True)
        self.port, self.camera, self.query, self.host = port, camera, query, host
        self.arrivals: list[float] = []
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.error: BaseException | None = None
        self._stop_reading = threading.Event()
        self._sock: socket.socket | None = None

    def __enter__(self) -> Self:
        self.start()
        self.wait_frames(1, within=15)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def run(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=10)
            self._sock = sock
            key = base64.b64encode(os.urandom(16)).decode()
            path = f"/cameras/{self.camera}{self.query}"
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            buffer = bytearray()
            while b"\r\n\r\n" not in buffer:
                buffer += self._receive(sock)
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise ConnectionError(f"handshake refused: {head[:200]!r}")
            buffer = bytearray(rest)
            sock.settimeout(1.0)
            while not self._stop_reading.is_set():
                frame = parse_server_frame(buffer)
                if frame is None:
                    try:
                        buffer += self._receive(sock)
                    except TimeoutError:
                        continue
                    continue
                opcode, payload = frame
                if opcode == 0x8:
                    self.close_code = struct.unpack(">H", payload[:2])[0] if payload else None
                    break
                if opcode == 0x2:
                    self.arrivals.append(time.monotonic())
        except (OSError, ConnectionError) as exc:
            if not self._stop_reading.is_set():
                self.error = exc
        finally:
            self.closed_at = time.monotonic()

    def _receive(self, sock: socket.socket) -> bytes:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        return data

    def stop(self) -> None:
        self._stop_reading.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self.join(5)

    def wait_frames(self, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self.arrivals) < count:
            if self.error is not None or self.closed_at is not None:
                raise AssertionError(f"viewer of {self.camera} ended: {self.error}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"viewer of {self.camera}: {len(self.arrivals)} frames, "
                    f"expected {count} within {within} s"
                )
            time.sleep(0.05)

    def frames_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.arrivals)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.arrivals if start <= t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def assert_kept(self, fps: float, since: float, fraction: float = 0.9) -> None:
        """The viewer is still connected and received at least ``fraction`` of ``fps``
        from ``since`` until now, with no gap longer than a second."""
        end = time.monotonic()
        assert self.error is None and self.closed_at is None, (
            f"viewer of {self.camera} was cut off: {self.error} (close {self.close_code})"
        )
        got = self.frames_between(since, end)
        expected = fps * (end - since)
        assert got >= fraction * expected, (
            f"viewer of {self.camera}: {got} frames in {end - since:.1f} s, "
            f"expected at least {fraction:.0%} of {expected:.0f}"
        )
        gap = self.longest_gap(since, end)
        assert gap < max(1.0, 3 / fps), f"viewer of {self.camera}: a {gap:.2f} s gap"
