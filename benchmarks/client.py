"""A cheap load-generating viewer: many raw WebSocket connections in one process.

Plain non-blocking sockets and `selectors`, no WebSocket library: it parses only the
frame headers, copies the first bytes of each image (enough for the latency stamp,
docs/protocol.md) and skips the rest of the payload without copying it anywhere.

Per connection it records frames, bytes, latency (receipt of the last byte minus the
stamp's capture time) and drops (gaps in the stamp's sequence numbers), counted only
between ``start`` and ``stop`` lines on stdin. On ``stop`` it prints one JSON summary on
stdout and exits. While counting, it prints ``{"frames": N}`` about once a second.

``--mode`` makes slow viewers: ``throttled`` reads each connection at most ``--read-rate``
bytes per second (a token bucket, reads of at most 16 KiB) and also reports each frame's
lag over time; ``stalled`` handshakes and then never reads again. ``--rcvbuf`` sets the
connections' SO_RCVBUF before connecting (so the kernel does not hide the slowness behind
megabytes of buffer).

``--protocol mjpeg`` reads ``GET /cameras/{id}/mjpeg`` instead: the parts of the
``multipart/x-mixed-replace`` body, each sized by its ``Content-Length`` header, the stamp
read the same way. ``--query`` is added to every URL (``fps=1``: the broker's per-client
rate cap). ``lap`` on stdin prints the summary of the window so far and starts a new one
(the process goes on); ``start`` begins a fresh window.

    python -m benchmarks.client --port 8765 --camera cam0:4 --camera cam1:4
    python -m benchmarks.client --port 8765 --camera cam0:2 --mode throttled --read-rate 1e6
    python -m benchmarks.client --port 8765 --camera cam0:4 --protocol mjpeg
    python -m benchmarks.client --port 8765 --camera cam0:4 --tls cert.pem   # wss, https
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from array import array

from benchmarks.common import latency_summary_ms
from broker.protocol import stamp

# Bytes of each image kept for the stamp: SOI, JFIF APP0 (18) and the COM segment (57).
PREFIX_BYTES = 256
RECV_BYTES = 1 << 20
THROTTLED_READ_BYTES = 16 * 1024  # the token bucket's size and the largest throttled read
MODES = ("fast", "throttled", "stalled")
PROTOCOLS = ("websocket", "mjpeg", "mux")
DRAIN_INTERVAL = 0.1  # s: while opening connections, read the open ones this often
MAX_PART_HEAD = 1024  # an MJPEG part head is about 90 bytes


class Connection:
    def __init__(self, sock: socket.socket, camera: str, name: str) -> None:
        self.sock, self.camera, self.name = sock, camera, name
        self.counting = False
        self.closed = False
        self.frames = self.bytes = self.drops = self.unstamped = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None  # of the last frame seen, counted or not
        self.last_counted: int | None = None  # of the last frame counted in the window
        self.latencies = array("d")
        self.times = array("d")  # receipt time of each counted frame, s after `start`
        self.started_wall = 0.0
        self.tokens = 0.0  # throttled mode: bytes this connection may read now
        self.refilled = 0.0
        self.reading = False  # registered with the selector
        self._reset()

    def reset_window(self, wall: float) -> None:
        """Start a new measured window at ``wall`` (Unix time)."""
        self.counting = True
        self.started_wall = wall
        self.frames = self.bytes = self.drops = self.unstamped = 0
        self.first_seq = self.last_counted = None
        self.latencies = array("d")
        self.times = array("d")

    def _reset(self) -> None:
        self.head = bytearray()
        self.want = 2  # bytes of self.head needed for the next parsing step
        self.header_len = 0
        self.length = -1
        self.skip = 0

    def _skip(self, pos: int, end: int, now: float) -> int:
        """Pass over image bytes that are not kept; the position after them."""
        take = min(self.skip, end - pos)
        self.skip -= take
        if not self.skip:
            self._finish(now)
        return pos + take

    def feed(self, data: memoryview, now: float) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                pos = self._skip(pos, end, now)
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
            self.last_counted = seq
            self.bytes += self.length
            self.latencies.append(now - captured_at)
            self.times.append(now - self.started_wall)
        self.last_seq = seq

    def summary(self, seconds: float, series: bool = False) -> dict[str, object]:
        span = None
        if self.first_seq is not None and self.last_counted is not None:
            span = self.last_counted - self.first_seq + 1
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
        } | (
            {
                "lag_series": [
                    [round(t, 3), round(v * 1000, 3)]
                    for t, v in zip(self.times, self.latencies, strict=True)
                ]
            }
            if series
            else {}
        )


class MuxConnection(Connection):
    """One ``/ws`` connection subscribed to one camera: each binary message is a frame
    with a small JSON header (docs/protocol.md, "Frames") whose ``seq`` and
    ``captured_at`` stand in for the JPEG stamp, so frames of any format (LZ4, BMP) are
    timed; the header fits in `PREFIX_BYTES`. Text messages (replies, events) are skipped."""

    def _finish(self, now: float) -> None:
        opcode = self.head[0] & 0x0F
        if opcode == 0x8:
            self.closed = True
        elif opcode == 0x2:
            body = bytes(self.head[self.header_len :])
            stamped = None
            if len(body) >= 2:
                length = int.from_bytes(body[:2], "big")
                with contextlib.suppress(ValueError):
                    header = json.loads(body[2 : 2 + length])
                    stamped = (int(header["seq"]), float(header["captured_at"]))
            self._record(stamped, now)
        self._reset()


def masked_text(text: str) -> bytes:
    """One masked WebSocket text frame (a client must mask)."""
    data = text.encode()
    mask = os.urandom(4)
    size = bytes((0x80 | len(data),)) if len(data) < 126 else bytes((0xFE,)) + len(data).to_bytes(2)
    return b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class MjpegConnection(Connection):
    """One ``multipart/x-mixed-replace`` stream: each part's head is read up to its blank
    line for ``Content-Length``; the first `PREFIX_BYTES` of the image are kept (the
    stamp), the rest is skipped. The CRLF that ends a part is read as the start of the
    next part's head."""

    def _reset(self) -> None:
        super()._reset()
        self.body_at = 0  # where the image starts in self.head, once the head is read

    def feed(self, data: memoryview, now: float) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                pos = self._skip(pos, end, now)
                continue
            if self.length < 0:  # in a part head
                before = len(self.head)
                take = min(end - pos, MAX_PART_HEAD - before)
                self.head += data[pos : pos + take]
                at = self.head.find(b"\r\n\r\n")
                if at < 0:
                    if len(self.head) >= MAX_PART_HEAD:
                        raise ValueError(f"{self.name}: no MJPEG part head in {MAX_PART_HEAD} B")
                    pos += take
                    continue
                pos += at + 4 - before
                self.length = part_length(bytes(self.head[:at]))
                del self.head[at + 4 :]
                self.body_at = at + 4
                self.want = self.body_at + min(self.length, PREFIX_BYTES)
            else:
                take = min(self.want - len(self.head), end - pos)
                self.head += data[pos : pos + take]
                pos += take
            if len(self.head) == self.want:
                self.skip = self.length - (self.want - self.body_at)
                if not self.skip:
                    self._finish(now)

    def _finish(self, now: float) -> None:
        self._record(stamp.read(self.head[self.body_at :]), now)
        self._reset()


def part_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"MJPEG part without Content-Length: {head[:200]!r}")


def open_connection(
    port: int,
    camera: str,
    name: str,
    rcvbuf: int = 0,
    protocol: str = "websocket",
    query: str = "",
    tls: ssl.SSLContext | None = None,
) -> tuple[Connection, bytes]:
    """Connect and handshake (blocking); returns the connection and bytes already read.
    With ``tls``, over TLS (wss, https) verified with that context."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    suffix = f"?{query}" if query else ""
    if protocol == "mjpeg":
        request, expect = f"GET /cameras/{camera}/mjpeg{suffix} HTTP/1.1\r\n", b"HTTP/1.1 200"
        request += f"Host: 127.0.0.1:{port}\r\n\r\n"
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/ws" if protocol == "mux" else f"/cameras/{camera}"
        request, expect = f"GET {path}{suffix} HTTP/1.1\r\n", b"HTTP/1.1 101"
        request += (
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    sock.sendall(request.encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"{name}: closed during the handshake")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if not head.startswith(expect):
        raise ConnectionError(f"{name}: handshake refused: {head.splitlines()[0]!r}")
    if protocol == "mux":  # after the handshake: a client waits for it before sending
        sock.sendall(masked_text(json.dumps({"type": "subscribe", "camera": camera})))
    sock.setblocking(False)
    kinds = {"mjpeg": MjpegConnection, "mux": MuxConnection}
    kind = kinds.get(protocol, Connection)
    return kind(sock, camera, name), rest


class Client:
    def __init__(
        self,
        connections: list[Connection],
        mode: str = "fast",
        read_rate: float = 0.0,
        brief: bool = False,
    ) -> None:
        self.connections = connections
        self.brief = brief
        self.mode = mode
        self.read_rate = read_rate if mode == "throttled" else 0.0
        self.selector = selectors.DefaultSelector()
        self.buffer = bytearray(RECV_BYTES)
        self.view = memoryview(self.buffer)
        self.pending = b""
        self.started = 0.0
        self.seconds = 0.0
        self.done = False

    def add(self, conn: Connection) -> None:
        """A connection just opened; a fast one is read from now on."""
        self.connections.append(conn)
        if self.mode == "fast":
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.reading = True

    def drain(self) -> None:
        """Read what the open connections hold, without waiting (while more are being
        opened: a connection left unread for seconds would be cut off as a slow client)."""
        for key, _ in self.selector.select(timeout=0):
            self._receive(key.data)

    def run(self) -> None:
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        next_report = time.monotonic() + 1
        while not self.done:
            timeout = self._throttle() if self.read_rate else 1.0
            for key, _ in self.selector.select(timeout=timeout):
                if key.data is None:
                    self._commands()
                else:
                    self._receive(key.data)
            if self.started and time.monotonic() >= next_report:
                next_report += 1
                frames = sum(c.frames for c in self.connections)
                print(json.dumps({"frames": frames}), flush=True)

    def _throttle(self) -> float:
        """Refill the token buckets; read only from connections holding a full read's worth.
        Returns the seconds until the next bucket fills (the select timeout)."""
        now, wait = time.monotonic(), 1.0
        for conn in self.connections:
            if conn.closed:
                continue
            if conn.refilled:
                conn.tokens += (now - conn.refilled) * self.read_rate
            conn.tokens = min(conn.tokens, float(THROTTLED_READ_BYTES))
            conn.refilled = now
            ready = conn.tokens >= THROTTLED_READ_BYTES
            if ready and not conn.reading:
                self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            elif not ready and conn.reading:
                self.selector.unregister(conn.sock)
            conn.reading = ready
            if not ready:
                wait = min(wait, (THROTTLED_READ_BYTES - conn.tokens) / self.read_rate)
        return max(wait, 0.001)

    def _receive(self, conn: Connection) -> None:
        self._receive_once(conn)
        sock = conn.sock
        # TLS: decrypted bytes may wait in the SSL object, where select cannot see them.
        while isinstance(sock, ssl.SSLSocket) and conn.reading and sock.pending():
            self._receive_once(conn)

    def _receive_once(self, conn: Connection) -> None:
        size = int(conn.tokens) if self.read_rate else RECV_BYTES
        try:
            count = conn.sock.recv_into(self.buffer, size)
        except (BlockingIOError, ssl.SSLWantReadError):  # the latter: half a TLS record
            return
        except OSError:
            count = 0
        if not count:
            conn.closed = True
            conn.reading = False
            self.selector.unregister(conn.sock)
            return
        if self.read_rate:
            conn.tokens -= count
            if conn.tokens < THROTTLED_READ_BYTES:
                conn.reading = False
                self.selector.unregister(conn.sock)
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
            self.started, wall = time.monotonic(), time.time()
            for conn in self.connections:
                conn.reset_window(wall)
        elif command == "lap":
            now = time.monotonic()
            self.seconds = now - self.started if self.started else 0.0
            print(json.dumps(self.summary()), flush=True)
            self._command("start")
        elif command == "stop":
            self.seconds = time.monotonic() - self.started if self.started else 0.0
            for conn in self.connections:
                conn.counting = False
            self.done = True

    def summary(self) -> dict[str, object]:
        connections = [
            c.summary(self.seconds, series=self.mode == "throttled") for c in self.connections
        ]
        if self.brief:
            for conn in connections:
                del conn["latencies_ms"]
        return {"seconds": round(self.seconds, 3), "mode": self.mode, "connections": connections}


def parse_camera(text: str) -> tuple[str, int]:
    camera, _, count = text.partition(":")
    return camera, int(count or 1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--camera",
        type=parse_camera,
        action="append",
        required=True,
        metavar="ID[:COUNT]",
        help="open COUNT connections to camera ID",
    )
    p.add_argument("--name", default="c", help="prefix of the connection names")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="fast",
        help="fast, throttled (--read-rate) or stalled (never reads)",
    )
    p.add_argument(
        "--read-rate",
        type=float,
        default=1e6,
        metavar="BYTES",
        help="throttled mode: bytes/s per connection (default 1e6)",
    )
    p.add_argument(
        "--rcvbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF of each connection (default: the kernel's)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="websocket",
        help="websocket (/cameras/ID), mjpeg (/cameras/ID/mjpeg) or mux (/ws, subscribed "
        "to ID: times frames of any format by their header)",
    )
    p.add_argument("--query", default="", help="query string for every URL, e.g. fps=1")
    p.add_argument(
        "--tls",
        metavar="CAFILE",
        help="connect over TLS (wss, https), trusting the certificates in CAFILE",
    )
    p.add_argument(
        "--brief",
        action="store_true",
        help="leave each connection's latency samples out of the summary",
    )
    return p


def raise_open_files(wanted: int) -> None:
    """Thousands of connections need more descriptors than a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_open_files(sum(count for _, count in args.camera) + 64)
    client = Client([], args.mode, args.read_rate, args.brief)
    tls = ssl.create_default_context(cafile=args.tls) if args.tls else None
    drained = time.monotonic()
    for camera, count in args.camera:
        for i in range(count):
            name = f"{args.name}{camera}/{i}"
            conn, rest = open_connection(
                args.port, camera, name, args.rcvbuf, args.protocol, args.query, tls
            )
            conn.feed(memoryview(rest), time.time())
            client.add(conn)
            if time.monotonic() - drained > DRAIN_INTERVAL:
                client.drain()
                drained = time.monotonic()
    print(json.dumps({"ready": True, "connections": len(client.connections)}), flush=True)
    client.run()
    print(json.dumps(client.summary()), flush=True)
    for conn in client.connections:
        conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
