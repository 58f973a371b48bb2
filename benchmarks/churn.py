"""The soak's load generator: connections that come and go over every output of the
broker, with bad input mixed in, from one trio process over raw sockets.

Operations, picked at random (weights ``KINDS``) ``--rate`` times a second:

- ``ws``: a camera's WebSocket (sometimes with ``?fps=``); 1-3 frames; then a close
  frame, a plain close or a reset (RST).
- ``mux``: ``/ws``: subscribe, a frame, then some of ping, list_cameras, get_stats,
  get_status, a valid and an invalid update_settings, and bad messages (not JSON, a
  binary message, an unknown type, ``request_id: 1e400``); unsubscribe; close or reset.
- ``mjpeg``: a camera's MJPEG stream, 1-2 parts, then a close or a reset.
- ``http``: one keep-alive connection, 2-5 requests: snapshot, next.jpg, HEAD, the JSON
  API, /metrics, the viewer page.
- ``upload``: ``POST /cameras/UPLOAD/frames``: a JPEG, a PNG, a form; or a bad upload (cut
  short, the wrong type, a 70-byte PNG declaring 30000x30000, 70000x10, two files, a
  declared length over the limit).
- ``bad``: a malformed request line, garbage, a head over 16 KiB, a head cut off, a
  WebSocket handshake dropped (closed or reset before the 101), an invalid
  Sec-WebSocket-Key, a 404, a 405, and on /ws an unmasked frame or a length of 2^62.

Each outcome is ``ok`` (the documented answer), ``refused`` (the documented refusal of
bad input; ``refused-bare-close`` / ``refused-left-open`` for a WebSocket protocol
violation closed without a close frame, or not closed) or ``failed:WHY`` (anything else:
a 5xx, a reset where an answer was due, a timeout, the broker gone).

Like the other load generators it takes ``start`` and ``stop`` on stdin and answers JSON
lines on stdout: ``{"ready": true}`` at once; at ``stop`` it starts nothing new, lets
what runs finish (at most ``DRAIN`` seconds) and prints ``{"ops": {kind: {outcome:
count}}, "seconds": ..., "skipped": ...}``.

    python -m benchmarks.churn --port 8765 --cameras cam0,cam1 --upload upload --rate 15
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import socket
import struct
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import trio

KINDS = {"ws": 3, "mux": 2, "mjpeg": 1, "http": 3, "upload": 2, "bad": 3}
OP_TIMEOUT = 20.0  # seconds one operation may take before it counts as failed
DRAIN = 25.0  # seconds the running operations get to finish after ``stop``
MAX_RUNNING = 64  # operations at once; beyond it a slot is skipped (and counted)
READ = 65536


class Failed(Exception):
    """The broker did not answer as documented; the text says how (a short reason)."""


class Peer:
    """One raw connection to the broker, with a read buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> Peer:
        try:
            return cls(await trio.open_tcp_stream("127.0.0.1", port))
        except OSError as exc:
            raise Failed("connect") from exc

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Failed("reset-on-send") from exc

    async def fill(self) -> bool:
        try:
            data = await self.stream.receive_some(READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.buffer += data
        return bool(data)

    async def lines(self) -> list[str]:
        """The lines up to the next blank line (a response or MJPEG part head)."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self.fill():
                raise Failed("closed-before-answer")
        end = self.buffer.index(b"\r\n\r\n")
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        return lines

    async def head(self) -> tuple[int, dict[str, str]]:
        """The next response head: status and headers (lower-case names)."""
        lines = await self.lines()
        try:
            status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError) as exc:
            raise Failed("bad-status-line") from exc
        return status, _headers(lines[1:])

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise Failed("closed-mid-body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = await self.head()
        length = 0 if head_only else int(headers.get("content-length", "0") or 0)
        return status, headers, await self.exactly(length)

    async def frame(self) -> tuple[int, bytes]:
        """The next WebSocket frame from the broker (unmasked)."""
        while True:
            parsed = parse_server_frame(self.buffer)
            if parsed is not None:
                return parsed
            if not await self.fill():
                raise Failed("closed-mid-stream")

    async def close(self, how: str = "close") -> None:
        if how == "reset":  # SO_LINGER 0: the kernel sends RST instead of FIN
            with contextlib.suppress(OSError):
                self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def parse_server_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """The next (opcode, payload) of an unmasked server frame, removed from ``buffer``;
    None until the whole frame is there. (The test suite's raw clients use it too.)"""
    if len(buffer) < 2:
        return None
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack(">H", buffer[2:4])
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,) = struct.unpack(">Q", buffer[2:10])
        offset = 10
    if len(buffer) < offset + length:
        return None
    payload = bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return opcode, payload


def client_frame(
    payload: bytes, opcode: int = 1, *, masked: bool = True, length: int | None = None
) -> bytes:
    length = len(payload) if length is None else length
    if length < 126:
        head = struct.pack(">BB", 0x80 | opcode, (0x80 if masked else 0) | length)
    elif length < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, (0x80 if masked else 0) | 126, length)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, (0x80 if masked else 0) | 127, length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return head + mask + bytes(a ^ b for a, b in zip(payload, key, strict=True))


def upgrade(path: str, key: str | None = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def request(
    method: str, path: str, body: bytes = b"", content_type: str = "", length: int | None = None
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: broker\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if body or length is not None or method in ("POST", "PATCH"):
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return head.encode() + b"\r\n" + body


# -- images to upload ------------------------------------------------------------------


def jpeg(width: int = 320, height: int = 240) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(3)
    image = cv2.resize(
        rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8), (width, height)
    )
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's head)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4))
        + chunk(b"IEND", b"")
    )


def png(width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def form(parts: list[tuple[str, bytes]], boundary: str = "soakBoundary") -> tuple[str, bytes]:
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"; filename="f{i}"\r\n'
            f"Content-Type: {kind}\r\n\r\n".encode()
            + data
            + b"\r\n"
            for i, (kind, data) in enumerate(parts)
        )
        + f"--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", body


# -- the operations ------------------------------------------------------------------------


class Churn:
    def __init__(self, port: int, cameras: list[str], upload: str, seed: int) -> None:
        self.port, self.cameras, self.upload_camera = port, cameras, upload
        self.rng = random.Random(seed)
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.jpeg, self.png = jpeg(), png()
        self.kinds: dict[str, Callable[[], Awaitable[str]]] = {
            "ws": self.ws,
            "mux": self.mux,
            "mjpeg": self.mjpeg,
            "http": self.http,
            "upload": self.upload,
            "bad": self.bad,
        }

    def camera(self) -> str:
        return self.rng.choice(self.cameras)

    def how(self) -> str:
        return self.rng.choice(["close", "close", "reset"])

    async def run_one(self, kind: str) -> None:
        try:
            with trio.fail_after(OP_TIMEOUT):
                outcome = await self.kinds[kind]()
        except Failed as failed:
            outcome = f"failed:{failed}"
        except trio.TooSlowError:
            outcome = "failed:timeout"
        self.outcomes[kind][outcome] += 1

    async def ws(self) -> str:
        peer = await Peer.open(self.port)
        fps = self.rng.choice(["", "", "?fps=5"])
        await peer.send(upgrade(f"/cameras/{self.camera()}{fps}"))
        status, _ = await peer.head()
        if status != 101:
            raise Failed(f"status-{status}")
        for _ in range(self.rng.randint(1, 3)):
            opcode, _ = await peer.frame()
            if opcode != 2:
                raise Failed(f"opcode-{opcode}")
        how = self.rng.choice(["frame", "close", "reset"])
        if how == "frame":
            await peer.send(client_frame(struct.pack(">H", 1000), 8))
        await peer.close("reset" if how == "reset" else "close")
        return "ok"

    async def mux(self) -> str:
        peer = await Peer.open(self.port)
        await peer.send(upgrade("/ws"))
        status, _ = await peer.head()
        if status != 101:
            raise Failed(f"status-{status}")
        camera = self.camera()
        requests: list[dict | bytes] = [
            {"type": "subscribe", "camera": camera, "max_fps": self.rng.choice([None, 5])}
        ]
        extras: list[dict | bytes] = [
            {"type": "ping", "data": {"n": 1}},
            {"type": "list_cameras"},
            {"type": "get_stats"},
            {"type": "command", "camera": camera, "command": "get_status"},
            {
                "type": "command",
                "camera": camera,
                "command": "update_settings",
                "settings": {"brightness": self.rng.randint(40, 60)},
            },
            {
                "type": "command",
                "camera": camera,
                "command": "update_settings",
                "settings": {"brightness": 500},
            },
            b"not json",
            b'{"type": "nope"}',
            b'{"type": "ping", "request_id": 1e400}',
        ]
        requests += self.rng.sample(extras, self.rng.randint(1, 4))
        requests.append({"type": "unsubscribe", "camera": camera})
        bad_binary = self.rng.random() < 0.2
        for i, item in enumerate(requests):
            text = item if isinstance(item, bytes) else json.dumps({**item, "request_id": i})
            await peer.send(client_frame(text if isinstance(text, bytes) else text.encode()))
        if bad_binary:
            await peer.send(client_frame(b"\x00\x01", 2))
        answers, frames = 0, 0
        expected = len(requests) + bad_binary
        while answers < expected:
            opcode, payload = await peer.frame()
            if opcode == 2:
                frames += 1
            elif opcode == 8:
                raise Failed("closed-by-broker")
            elif opcode == 1:
                kind = json.loads(payload).get("type")
                if kind == "error" and json.loads(payload).get("code") == "internal_error":
                    raise Failed("internal_error")
                answers += kind != "event"
        if self.rng.random() < 0.5:
            await peer.send(client_frame(struct.pack(">H", 1000), 8))
        await peer.close(self.how())
        return "ok"

    async def mjpeg(self) -> str:
        peer = await Peer.open(self.port)
        await peer.send(request("GET", f"/cameras/{self.camera()}/mjpeg"))
        status, _ = await peer.head()
        if status != 200:
            raise Failed(f"status-{status}")
        for _ in range(self.rng.randint(1, 2)):
            lines = await peer.lines()  # "--boundary", Content-Type, Content-Length
            if not lines[0].lstrip("\r\n").startswith("--"):
                raise Failed("bad-part")
            await peer.exactly(int(_headers(lines[1:]).get("content-length", "0")) + 2)
        await peer.close(self.how())
        return "ok"

    async def http(self) -> str:
        peer = await Peer.open(self.port)
        camera = self.camera()
        snapshot = f"/cameras/{camera}/snapshot.jpg"
        paths = [
            ("GET", snapshot),
            ("HEAD", snapshot),
            ("GET", f"/cameras/{camera}/next.jpg?after=-1&timeout=0.5"),
            ("GET", "/api/cameras"),
            ("GET", "/api/stats"),
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/"),
            ("GET", "/api/presets"),
        ]
        for method, path in self.rng.sample(paths, self.rng.randint(2, 5)):
            await peer.send(request(method, path))
            status, _, _ = await peer.response(head_only=method == "HEAD")
            if status != 200:
                raise Failed(f"status-{status}")
        await peer.close(self.how())
        return "ok"

    async def upload(self) -> str:
        path = f"/cameras/{self.upload_camera}/frames"
        good = [("image/jpeg", self.jpeg), ("image/png", self.png), form([("image/png", self.png)])]
        bad = [
            ("image/jpeg", self.jpeg[: len(self.jpeg) // 3], {201, 415}),  # cut: header read only
            ("image/png", self.jpeg, {415}),  # the wrong type
            ("image/png", png_declaring(30000, 30000), {413, 415}),  # a bomb's head
            ("image/png", png_declaring(70000, 10), {413, 415}),  # beyond the caps
            (*form([("image/png", self.png), ("image/png", self.png)]), {400}),  # two files
            ("text/plain", b"hello", {415}),
        ]
        peer = await Peer.open(self.port)
        if self.rng.random() < 0.5:
            content_type, body = self.rng.choice(good)
            await peer.send(request("POST", path, body, content_type))
            status, _, _ = await peer.response()
            await peer.close(self.how())
            if status != 201:
                raise Failed(f"status-{status}")
            return "ok"
        if self.rng.random() < 0.15:  # declares more than ingest.max_frame_bytes: 413, closed
            await peer.send(request("POST", path, b"", "image/jpeg", length=1 << 30))
            status, _, _ = await peer.response()
            await peer.close()
            if status != 413:
                raise Failed(f"status-{status}")
            return "refused"
        content_type, body, expected = self.rng.choice(bad)
        await peer.send(request("POST", path, body, content_type))
        status, _, _ = await peer.response()
        await peer.close(self.how())
        if status not in expected:
            raise Failed(f"status-{status}")
        return "refused"

    async def bad(self) -> str:
        peer = await Peer.open(self.port)
        choice = self.rng.choice(
            [
                "malformed",
                "garbage",
                "huge-head",
                "cut-head",
                "dropped-handshake",
                "reset-handshake",
                "bad-key",
                "not-found",
                "bad-method",
                "unmasked",
                "huge-claim",
            ]
        )
        if choice in ("malformed", "garbage", "huge-head"):
            data = {
                "malformed": b"GET / HTTP/1.1 extra words\r\nHost: b\r\n\r\n",
                "garbage": os.urandom(64) + b"\r\n\r\n",
                "huge-head": b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            }[choice]
            await peer.send(data)
            status = await self._status_or_close(peer)
            await peer.close(self.how())
            if status not in (None, 400, 431):
                raise Failed(f"status-{status}")
            return "refused"
        if choice == "cut-head":
            await peer.send(b"GET /cameras/" + self.camera().encode() + b"/snapshot.jpg HT")
            await trio.sleep(self.rng.uniform(0, 0.5))
            await peer.close(self.how())
            return "refused"
        if choice in ("dropped-handshake", "reset-handshake"):
            await peer.send(upgrade(self.rng.choice(["/ws", f"/cameras/{self.camera()}"])))
            await peer.close("reset" if choice == "reset-handshake" else "close")
            return "refused"
        if choice == "bad-key":
            await peer.send(upgrade(f"/cameras/{self.camera()}", key="c2hvcnQ="))
            status = await self._status_or_close(peer)
            await peer.close(self.how())
            return "refused" if status == 400 else "ok"  # 400 once the key is checked
        if choice in ("not-found", "bad-method"):
            method, path = ("GET", "/no/such/path") if choice == "not-found" else ("PUT", "/")
            await peer.send(request(method, path))
            status, _, _ = await peer.response()
            await peer.close(self.how())
            if status not in (404, 405):
                raise Failed(f"status-{status}")
            return "refused"
        await peer.send(upgrade("/ws"))  # then a protocol violation
        status, _ = await peer.head()
        if status != 101:
            raise Failed(f"status-{status}")
        frame = (
            client_frame(b'{"type": "ping"}', masked=False)
            if choice == "unmasked"
            else client_frame(b"x" * 10, length=1 << 62)
        )
        await peer.send(frame)
        outcome = "refused-left-open"  # RFC 6455: the broker should close, with a code
        with trio.move_on_after(2):
            try:
                while (await peer.frame())[0] != 8:
                    pass
                outcome = "refused"  # a close frame (1002, 1009)
            except Failed:
                outcome = "refused-bare-close"  # closed, but without saying why
        await peer.close(self.how())
        return outcome

    async def _status_or_close(self, peer: Peer) -> int | None:
        try:
            status, _, _ = await peer.response()
        except Failed:
            return None  # closed without an answer: allowed for garbage
        return status


# -- the process ----------------------------------------------------------------------------


async def commands(started: trio.Event, stopped: trio.Event) -> None:
    """``start`` and ``stop`` lines on stdin (end of input is a stop)."""
    while not stopped.is_set():
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        command = line.strip()
        if command == "start":
            started.set()
        elif command == "stop" or not line:
            started.set()
            stopped.set()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    churn = Churn(args.port, args.cameras.split(","), args.upload, args.seed)
    kinds, weights = zip(*args.kinds.items(), strict=True)
    started, stopped = trio.Event(), trio.Event()
    limit = trio.CapacityLimiter(MAX_RUNNING)
    print(json.dumps({"ready": True}), flush=True)
    skipped = 0

    async def one(kind: str) -> None:
        async with limit:
            await churn.run_one(kind)

    async with trio.open_nursery() as outer:
        outer.start_soon(commands, started, stopped)
        await started.wait()
        began = time.monotonic()
        async with trio.open_nursery() as ops:
            next_at = trio.current_time()
            while not stopped.is_set():
                if limit.borrowed_tokens >= MAX_RUNNING:
                    skipped += 1
                else:
                    ops.start_soon(one, churn.rng.choices(kinds, weights)[0])
                next_at += 1 / args.rate
                with trio.move_on_at(next_at):
                    await stopped.wait()
            ops.cancel_scope.deadline = trio.current_time() + DRAIN
        outer.cancel_scope.cancel()
    seconds = time.monotonic() - began
    outcomes = {kind: dict(counts) for kind, counts in sorted(churn.outcomes.items())}
    return {"seconds": round(seconds, 1), "skipped": skipped, "ops": outcomes}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.churn", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cameras", required=True, help="camera ids, comma-separated")
    p.add_argument("--upload", required=True, help="the camera frames are uploaded to")
    p.add_argument("--rate", type=float, default=15.0, help="operations a second (default 15)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--kinds",
        type=kind_weights,
        default=dict(KINDS),
        metavar="KIND[=W],...",
        help="operations and their weights (default "
        + ",".join(f"{k}={w}" for k, w in KINDS.items())
        + ")",
    )
    return p


def kind_weights(text: str) -> dict[str, float]:
    chosen: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, weight = item.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        chosen[kind] = float(weight) if weight else KINDS[kind]
    if not chosen:
        raise argparse.ArgumentTypeError("no kinds given")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = trio.run(main_async, args)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
