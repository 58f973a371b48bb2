"""A cheap load-generating viewer: many raw WebSocket connections in one process.

Plain non-blocking sockets and `selectors`, no WebSocket library: it parses only the
frame headers, copies the first bytes of each image (enough for the latency stamp,
docs/protocol.md) and skips the rest of the payload without copying it anywhere.

Per connection it records frames, bytes, latency (receipt of the last byte minus the
stamp's capture time) and drops (gaps in the stamp's sequence numbers), counted only
between ``start`` and ``stop`` lines on stdin. On ``stop`` it prints one JSON summary on
stdout and exits. While counting, it prints ``{"frames": N}`` about once a second.

    python -m benchmarks.client --port 8765 --camera cam0:4 --camera cam1:4
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import sys
import time
from array import array

from benchmarks.common import latency_summary_ms
from cameras import stamp

# Bytes of each image kept for the stamp: SOI, JFIF APP0 (18) and the COM segment (57).
PREFIX_BYTES = 256
RECV_BYTES = 1 << 20


class Connection:
    def __init__(self, sock: socket.socket, camera: str, name: str) -> None:
        self.sock, self.camera, self.name = sock, camera, name
        self.counting = False
        self.closed = False
        self.frames = self.bytes = self.drops = self.unstamped = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.latencies = array("d")
        self._reset()

    def _reset(self) -> None:
        self.head = bytearray()
        self.want = 2  # bytes of self.head needed for the next parsing step
        self.header_len = 0
        self.length = -1
        self.skip = 0

    def feed(self, data: memoryview, now: float) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                take = min(self.skip, end - pos)
                self.skip -= take
                pos += take
                if not self.skip:
                    self._finish(now)
                continue
            take = min(self.want - len(self.head), end - pos)
            self.head += data[pos : pos + take]
            pos += take
            if len(self.head) == self.want:
                self._advance(now)

    def _advance(self, now: float) -> None:
        head = self.head
        if not self.header_len:
            code = head[1] & 0x7F
            self.header_len = 2 if code < 126 else 4 if code == 126 else 10
            if self.header_len > 2:
                self.want = self.header_len
                return
        if self.length < 0:
            code = head[1] & 0x7F
            self.length = code if code < 126 else int.from_bytes(head[2 : self.header_len])
            prefix = min(self.length, PREFIX_BYTES)
            self.want = self.header_len + prefix
            if prefix:
                return
        self.skip = self.length - (self.want - self.header_len)
        if not self.skip:
            self._finish(now)

    def _finish(self, now: float) -> None:
        opcode = self.head[0] & 0x0F
        if opcode == 0x8:
            self.closed = True
        elif opcode == 0x2:
            self._record(stamp.read(self.head[self.header_len :]), now)
        self._reset()

    def _record(self, stamped: tuple[int, float] | None, now: float) -> None:
        if stamped is None:
            self.unstamped += self.counting
            return
        seq, captured_at = stamped
        if self.counting:
            if self.first_seq is None:
                self.first_seq = seq
            elif self.last_seq is not None and seq > self.last_seq + 1:
                self.drops += seq - self.last_seq - 1
            self.frames += 1
            self.bytes += self.length
            self.latencies.append(now - captured_at)
        self.last_seq = seq

    def summary(self, seconds: float) -> dict[str, object]:
        span = None
        if self.first_seq is not None and self.last_seq is not None:
            span = self.last_seq - self.first_seq + 1
        return {
            "name": self.name,
            "camera": self.camera,
            "frames": self.frames,
            "bytes": self.bytes,
            "fps": round(self.frames / seconds, 3) if seconds else None,
            "drops": self.drops,
            "seq_span": span,
            "unstamped": self.unstamped,
            "closed": self.closed,
            **latency_summary_ms(self.latencies),
            "latencies_ms": [round(v * 1000, 3) for v in self.latencies],
        }


def open_connection(port: int, camera: str, name: str) -> tuple[Connection, bytes]:
    """Connect and handshake (blocking); returns the connection and bytes already read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /cameras/{camera} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"{name}: closed during the handshake")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"{name}: handshake refused: {head.splitlines()[0]!r}")
    sock.setblocking(False)
    return Connection(sock, camera, name), rest


class Client:
    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections
        self.selector = selectors.DefaultSelector()
        self.buffer = bytearray(RECV_BYTES)
        self.view = memoryview(self.buffer)
        self.pending = b""
        self.started = 0.0
        self.seconds = 0.0
        self.done = False

    def run(self) -> None:
        for conn in self.connections:
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        next_report = time.monotonic() + 1
        while not self.done:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data is None:
                    self._commands()
                else:
                    self._receive(key.data)
            if self.started and time.monotonic() >= next_report:
                next_report += 1
                frames = sum(c.frames for c in self.connections)
                print(json.dumps({"frames": frames}), flush=True)

    def _receive(self, conn: Connection) -> None:
        try:
            count = conn.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if not count:
            conn.closed = True
            self.selector.unregister(conn.sock)
            return
        conn.feed(self.view[:count], time.time())

    def _commands(self) -> None:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            self.done = True
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self._command(line.strip().decode())

    def _command(self, command: str) -> None:
        if command == "start":
            self.started = time.monotonic()
            for conn in self.connections:
                conn.counting = True
        elif command == "stop":
            self.seconds = time.monotonic() - self.started if self.started else 0.0
            for conn in self.connections:
                conn.counting = False
            self.done = True

    def summary(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            "connections": [c.summary(self.seconds) for c in self.connections],
        }


def parse_camera(text: str) -> tuple[str, int]:
    camera, _, count = text.partition(":")
    return camera, int(count or 1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--camera", type=parse_camera, action="append", required=True,
                   metavar="ID[:COUNT]", help="open COUNT connections to camera ID")  # fmt: skip
    p.add_argument("--name", default="c", help="prefix of the connection names")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    connections = []
    for camera, count in args.camera:
        for i in range(count):
            conn, rest = open_connection(args.port, camera, f"{args.name}{camera}/{i}")
            conn.feed(memoryview(rest), time.time())
            connections.append(conn)
    print(json.dumps({"ready": True, "connections": len(connections)}), flush=True)
    client = Client(connections)
    client.run()
    print(json.dumps(client.summary()), flush=True)
    for conn in connections:
        conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
