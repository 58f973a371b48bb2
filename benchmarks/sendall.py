"""The machine's fan-out ceiling: the same JPEG bytes written with plain trio ``send_all``.

No broker, no WebSocket library, no queues, no pacing: it encodes the replay's loop of
test-pattern JPEGs once, frames each one with the 10-byte header of a binary WebSocket
message (the bytes the broker writes, so the same client processes read both), and for
every connection a task writes those messages back to back with ``send_all`` as fast as
the socket takes them. A client's upgrade request is answered with a bare ``101`` line and
nothing else, so `benchmarks.client` connects to it unchanged.

Prints ``{"ready": true, "port": P, "mean_frame_bytes": N}`` once listening on
127.0.0.1; exits at the end of its stdin or on SIGTERM.

    python -m benchmarks.sendall --width 1280 --height 720 --quality 80
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys

import trio

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


def messages(width: int, height: int, quality: int, count: int) -> list[bytes]:
    from benchmarks.replay import prepare

    return [
        struct.pack(">BBQ", 0x82, 127, len(f.data)) + bytes(f.data)
        for f in prepare(width, height, quality, count)
    ]


async def serve(frames: list[bytes]) -> None:
    counter = 0

    async def feed(stream: trio.SocketStream) -> None:
        nonlocal counter
        counter += 1
        i, request = counter, b""  # connections start at different frames, like a live feed
        async with stream:
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            try:
                await stream.send_all(SWITCHING)
                while True:
                    await stream.send_all(frames[i % len(frames)])
                    i += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    size = sum(len(f) - 10 for f in frames) // len(frames)
    print(json.dumps({"ready": True, "port": port, "mean_frame_bytes": size}), flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, feed, listeners)
        while True:  # until the end of stdin
            await trio.lowlevel.wait_readable(sys.stdin.fileno())
            if not os.read(sys.stdin.fileno(), 4096):
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sendall", description=__doc__)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--frames", type=int, default=30, help="distinct frames in the loop")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    frames = messages(args.width, args.height, args.quality, args.frames)
    trio.run(serve, frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
