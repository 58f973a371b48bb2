"""h11 → trio-websocket hand-over and pre-built frames (broker/wsframes.py), including a
test that pins the trio-websocket internals `send_prebuilt` relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection

from broker import wsframes
from broker.frames import Frame, websocket_binary_header
from broker.wsframes import ReplayStream, close_frame, request_bytes, send_prebuilt

UPGRADE = (
    b"GET /ws/cam1?max_fps=5 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"User-Agent: test/1.0\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
# A masked client text frame ("Hi") that arrived in the same read as the request.
EARLY_FRAME = b"\x81\x82\x01\x02\x03\x04" + bytes(
    a ^ b for a, b in zip(b"Hi", b"\x01\x02", strict=True)
)

PAYLOADS = [b"", b"x", b"\x00" * 125, bytes(range(256)) * 2, b"\xff\xd8\xff" + b"j" * 70_000]


@asynccontextmanager
async def served(
    handler: Callable[[WebSocketRequest], Awaitable[None]], **client_options: Any
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket server running ``handler`` on a free port, and a client of it."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        async with trio_websocket.open_websocket_url(url, **client_options) as client:
            yield client
        nursery.cancel_scope.cancel()


def parse_request(raw: bytes) -> tuple[h11.Request, bytes]:
    """The request h11 reads from ``raw`` and the bytes left after its head."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    trailing, closed = conn.trailing_data  # what the broker replays after the head
    assert not closed
    return request, trailing


def test_close_frame() -> None:
    assert close_frame(1001) == b"\x88\x02\x03\xe9"
    assert close_frame(wsframes.GOING_AWAY) == close_frame(1001)
    assert close_frame(1000) == b"\x88\x02\x03\xe8"


@pytest.mark.parametrize("trailing", [b"", EARLY_FRAME], ids=["alone", "with-early-frame"])
def test_request_bytes_reconstructs_the_request(trailing: bytes) -> None:
    request, left = parse_request(UPGRADE + trailing)
    assert left == trailing
    rebuilt = request_bytes(request, left)
    again, left_again = parse_request(rebuilt)
    assert again.method == request.method == b"GET"
    assert again.target == request.target == b"/ws/cam1?max_fps=5"
    assert list(again.headers) == list(request.headers)
    assert again.http_version == b"1.1"
    assert left_again == trailing


def test_is_websocket_upgrade() -> None:
    request, _ = parse_request(UPGRADE)
    assert wsframes.is_websocket_upgrade(request)
    plain = h11.Request(method="GET", target="/", headers=[("Host", "x")])
    assert not wsframes.is_websocket_upgrade(plain)
    upper = h11.Request(method="GET", target="/", headers=[("Host", "x"), ("Upgrade", "WebSocket")])
    assert wsframes.is_websocket_upgrade(upper)


# -- ReplayStream ---------------------------------------------------------------------


async def test_replay_stream_yields_the_prefix_then_the_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    replay = ReplayStream(right, b"hello world")
    with trio.fail_after(1):
        await left.send_all(b"after")
        assert await replay.receive_some(5) == b"hello"
        assert await replay.receive_some(3) == b" wo"
        assert await replay.receive_some(100) == b"rld"
        assert await replay.receive_some(100) == b"after"
        await replay.send_all(b"reply")
        await replay.wait_send_all_might_not_block()
        assert await left.receive_some(100) == b"reply"
        await replay.aclose()
        assert await left.receive_some(100) == b""  # closing it closes the real stream
        await left.aclose()


async def test_replay_stream_without_max_bytes_gives_the_whole_prefix() -> None:
    left, right = trio.testing.lockstep_stream_pair()
    replay = ReplayStream(right, b"prefix")
    with trio.fail_after(1):
        assert await replay.receive_some() == b"prefix"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_all, b"more")
            assert await replay.receive_some() == b"more"
        await replay.aclose()
        await left.aclose()


async def test_replay_stream_with_empty_prefix_reads_the_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    replay = ReplayStream(right, b"")
    with trio.fail_after(1):
        await left.send_all(b"data")
        assert await replay.receive_some(2) == b"da"
        await replay.aclose()
        await left.aclose()


# -- send_prebuilt over real trio-websocket connections -------------------------------


async def test_trio_websocket_internals_we_rely_on_exist() -> None:
    """Fails loudly if a trio-websocket upgrade renames what send_prebuilt uses."""
    left, right = trio.testing.memory_stream_pair()
    ws = WebSocketConnection(right, WSConnection(ConnectionType.SERVER))
    assert hasattr(ws, "_stream"), "trio-websocket renamed WebSocketConnection._stream"
    assert hasattr(ws, "_stream_lock"), "trio-websocket renamed WebSocketConnection._stream_lock"
    assert ws._stream is right
    assert isinstance(ws._stream_lock, trio.StrictFIFOLock)
    await left.aclose()
    await right.aclose()


async def test_send_prebuilt_over_tcp() -> None:
    """A real server/client pair: pre-built frames arrive as exactly the payloads sent,
    in order with trio-websocket's own messages."""
    server_checks: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        assert isinstance(ws._stream_lock, trio.StrictFIFOLock)
        assert isinstance(ws._stream, trio.SocketStream)
        server_checks.append("internals")
        for payload in PAYLOADS:
            await send_prebuilt(ws, websocket_binary_header(len(payload)) + payload)
        await ws.send_message("text from trio-websocket")
        await send_prebuilt(ws, websocket_binary_header(3) + b"end")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()  # until the client closes

    with trio.fail_after(5):
        async with served(handler) as client:
            for payload in PAYLOADS:
                assert await client.get_message() == payload
            assert await client.get_message() == "text from trio-websocket"
            assert await client.get_message() == b"end"
    assert server_checks == ["internals"]


async def test_direct_writes_share_the_lock_with_trio_websocket() -> None:
    """`direct_access` swaps trio-websocket's owner-bound lock for a Semaphore and finds
    trio's OS socket (internals: fails loudly if they change); frames written straight
    to the socket, in full or in part with the rest finished by another task, arrive
    whole and in order with trio-websocket's own messages."""
    import socket

    from broker.hub import Camera, CameraInfo, Subscriber
    from broker.streams import DirectWriter

    big = bytes(range(256)) * 4096  # 1 MiB: more than a socket takes at once

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        access = wsframes.direct_access(ws)
        assert access is not None, "trio's SocketType._sock or trio-websocket's lock changed"
        lock, sock = access
        assert isinstance(lock, trio.Semaphore) and ws._stream_lock is lock
        assert isinstance(sock, socket.socket)
        assert wsframes.direct_access(ws) == (lock, sock)  # replaced once
        subscriber = Subscriber(Camera(CameraInfo("c", "c", 1, 1)), "client", 2)
        writer = DirectWriter(lock, sock, subscriber, lambda frame: frame.data)
        for payload in (b"small", big):
            frame = Frame("c", 0, 0.0, 1, 1, "jpeg", websocket_binary_header(len(payload))
                          + payload, 0.0)  # fmt: skip
            assert writer(frame)
            if subscriber.inflight is not None:  # written in part: finish it, as a task does
                await writer.finish(ws._stream, subscriber.inflight[1])
                subscriber.inflight = None
            assert lock.value == 1
        await ws.send_message("text from trio-websocket")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()  # until the client closes

    with trio.fail_after(10):
        async with served(handler, max_message_size=2 << 20) as client:
            assert await client.get_message() == b"small"
            assert await client.get_message() == big
            assert await client.get_message() == "text from trio-websocket"


async def test_concurrent_send_prebuilt_never_interleaves() -> None:
    """Several tasks writing large frames at once: the lock keeps each frame whole."""
    size = 256 * 1024
    payloads = [bytes([n]) * size for n in range(1, 5)]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with trio.open_nursery() as nursery:
            for payload in payloads:
                message = websocket_binary_header(len(payload)) + payload
                nursery.start_soon(send_prebuilt, ws, message)
            nursery.start_soon(ws.ping, b"p")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()  # until the client closes

    with trio.fail_after(5):
        async with served(handler) as client:
            got = [await client.get_message() for _ in payloads]
    assert sorted(got) == sorted(payloads)


async def test_upgrade_handed_over_through_replay_stream() -> None:
    """The broker's hand-over: h11 reads the head, ReplayStream replays it into
    wrap_server_stream, pre-built frames reach a trio-websocket client, and
    close_going_away ends the connection with 1001."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    payload = b"\xff\xd8\xff" + b"q" * 1000

    async def serve() -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await server_stream.receive_some(65536))
                continue
            break
        assert isinstance(event, h11.Request)
        assert wsframes.is_websocket_upgrade(event)
        raw = request_bytes(event, conn.trailing_data[0])
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(
                nursery, ReplayStream(server_stream, raw)
            )
            assert request.path == "/ws/cam1"
            ws = await request.accept()
            await send_prebuilt(ws, websocket_binary_header(len(payload)) + payload)
            assert await ws.get_message() == "got it"
            await wsframes.close_going_away(ws)
            nursery.cancel_scope.cancel()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = await trio_websocket.wrap_client_stream(
                nursery, client_stream, "127.0.0.1", "/ws/cam1"
            )
            assert await client.get_message() == payload
            await client.send_message("got it")
            with pytest.raises(ConnectionClosed) as closed:
                await client.get_message()
            assert closed.value.reason.code == wsframes.GOING_AWAY
            await client.aclose()
