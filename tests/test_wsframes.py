"""h11 → trio-websocket hand-over and pre-built frames (broker/wsframes.py), including a
test that pins the trio-websocket internals `send_prebuilt` relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
import trio_websocket
from rawws import BINARY, CLOSE, CONT, PING, TEXT, client_frame
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection

from broker.core.frame import Frame, websocket_binary_header
from broker.serve import wsframes
from broker.serve.wsframes import ReplayStream, close_frame, request_bytes, send_prebuilt

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
        for payload in PAYLOADS:  # header and payload as two buffers, as a large frame's
            await send_prebuilt(ws, (websocket_binary_header(len(payload)), payload))
        await ws.send_message("text from trio-websocket")
        await send_prebuilt(ws, (websocket_binary_header(3) + b"end",))
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

    from broker.core.camera import Camera, CameraInfo
    from broker.core.subscriber import Subscriber
    from broker.serve.delivery import DirectWriter

    big = bytes(range(256)) * 4096  # 1 MiB: more than a socket takes at once, and
    # a message of two buffers (header, payload), written with one sendmsg

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        access = wsframes.direct_access(ws)
        assert access is not None, "trio's SocketType._sock or trio-websocket's lock changed"
        lock, sock = access
        stream_lock: trio.Semaphore | trio.StrictFIFOLock = ws._stream_lock  # now replaced
        assert isinstance(lock, trio.Semaphore) and stream_lock is lock
        assert isinstance(sock, socket.socket)
        assert wsframes.direct_access(ws) == (lock, sock)  # replaced once
        subscriber = Subscriber(Camera(CameraInfo("c", "c", 1, 1)), "client", 2)
        writer = DirectWriter(lock, sock, subscriber, Frame.websocket_message)
        for payload in (b"small", big):
            frame = Frame("c", 0, 0.0, 1, 1, "jpeg", payload, 0.0)
            assert len(frame.websocket_message()) == (1 if payload == b"small" else 2)
            assert writer(frame)
            if writer.inflight is not None:  # written in part: finish it, as a task does
                await writer.finish(ws._stream, writer.inflight[1])
                writer.inflight = None
            assert lock.value == 1
        await ws.send_message("text from trio-websocket")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()  # until the client closes

    with trio.fail_after(10):
        async with served(handler, max_message_size=2 << 20) as client:
            assert await client.get_message() == b"small"
            assert await client.get_message() == big
            assert await client.get_message() == "text from trio-websocket"


@pytest.mark.parametrize(
    ("sent", "rest"),
    [
        (0, [b"head", b"payload"]),
        (2, [b"ad", b"payload"]),
        (4, [b"payload"]),
        (6, [b"yload"]),
        (11, []),
    ],
)
def test_rest_after_a_partial_write(sent: int, rest: list[bytes]) -> None:
    from broker.serve.delivery import rest_after

    assert [bytes(part) for part in rest_after((b"head", b"payload"), sent)] == rest


async def test_concurrent_send_prebuilt_never_interleaves() -> None:
    """Several tasks writing large frames at once: the lock keeps each frame whole."""
    size = 256 * 1024
    payloads = [bytes([n]) * size for n in range(1, 5)]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with trio.open_nursery() as nursery:
            for payload in payloads:
                message = (websocket_binary_header(len(payload)), payload)
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
                conn.receive_data(bytes(await server_stream.receive_some(65536)))
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
            await send_prebuilt(ws, (websocket_binary_header(len(payload)) + payload,))
            assert await ws.get_message() == "got it"
            await wsframes.close_going_away(ws)
            nursery.cancel_scope.cancel()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = await trio_websocket.wrap_client_stream(
                nursery,
                client_stream,  # type: ignore[arg-type]  # annotated SocketStream | SSLStream; any trio Stream works
                "127.0.0.1",
                "/ws/cam1",
            )
            assert await client.get_message() == payload
            await client.send_message("got it")
            with pytest.raises(ConnectionClosed) as closed:
                await client.get_message()
            reason = closed.value.reason
            assert reason is not None and reason.code == wsframes.GOING_AWAY
            await client.aclose()


# -- the opening handshake --------------------------------------------------------------


def upgrade_request(**changes: bytes | None) -> h11.Request:
    """The UPGRADE request with some headers changed (None removes one)."""
    request, _ = parse_request(UPGRADE)
    headers = [
        (name, changes.pop(name.decode().replace("-", "_"), value))
        for name, value in request.headers
    ]
    headers += [(name.replace("_", "-").encode(), value) for name, value in changes.items()]
    return h11.Request(
        method=request.method,
        target=request.target,
        headers=[(n, v) for n, v in headers if v is not None],
    )


def test_a_good_handshake_passes() -> None:
    assert wsframes.handshake_problem(upgrade_request()) is None
    request = upgrade_request(connection=b"keep-alive, Upgrade")  # Firefox
    assert wsframes.handshake_problem(request) is None


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"sec_websocket_key": b"short"}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_key": b"dGhlIHNhbXBsZSBub25jZQ"}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_key": b"dGhlIHNhbXBsZSBub25jZT0="}, 400, "Sec-WebSocket-Key"),  # 17
        ({"sec_websocket_key": b"!!!!!!!!!!!!!!!!!!!!!!=="}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_key": None}, 400, "Sec-WebSocket-Key"),
        ({"sec_websocket_version": b"8"}, 426, "version 13"),
        ({"sec_websocket_version": None}, 400, "version 13"),
        ({"connection": b"keep-alive"}, 400, "Connection"),
        ({"connection": b"Upgrade, \xff"}, 400, "ASCII"),
        ({"sec_websocket_protocol": b"\xe9t\xe9"}, 400, "ASCII"),
        ({"host": b"xn--zz"}, 400, "Host"),  # idna cannot decode it: wsproto raised
        ({"host": b"caf\xe9"}, 400, "Host"),
    ],
)
def test_a_bad_handshake_is_refused(
    changes: dict[str, bytes | None], status: int, words: str
) -> None:
    problem = wsframes.handshake_problem(upgrade_request(**changes))
    assert problem is not None and problem.status == status
    assert words in problem.body.decode()
    if status == 426:
        assert ("sec-websocket-version", "13") in problem.headers


def test_a_post_upgrade_is_refused() -> None:
    request, _ = parse_request(UPGRADE.replace(b"GET", b"POST", 1))
    problem = wsframes.handshake_problem(request)
    assert problem is not None and problem.status == 400


# -- InboundFrames ------------------------------------------------------------------------


GOOD = [
    client_frame(TEXT, b"hello"),
    client_frame(TEXT, "h\u00e9".encode()[:2], fin=False)
    + client_frame(PING, b"p")
    + client_frame(CONT, "h\u00e9".encode()[2:]),  # a character split across frames
    client_frame(BINARY, b"\xff" * 300) + client_frame(BINARY, b"x" * 70_000),
    client_frame(BINARY, b"a", fin=False)
    + client_frame(CONT, b"b", fin=False)
    + client_frame(CONT, b""),
    client_frame(CLOSE, b"\x03\xe8bye"),
    client_frame(CLOSE, b""),
    client_frame(CLOSE, b"\x0f\xa0") + b"\x00anything after a close is trio-websocket's",
]


@pytest.mark.parametrize("data", GOOD)
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_good_frames_pass_in_any_pieces(data: bytes, chunk: int) -> None:
    frames = wsframes.InboundFrames(100_000)
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        assert frames.feed(piece) == len(piece)
    assert frames.violation is None


BAD = [
    (client_frame(TEXT, b"x", rsv=4), 1002, "reserved"),
    (client_frame(0x3, b"x"), 1002, "opcode"),
    (client_frame(0xB), 1002, "opcode"),
    (client_frame(TEXT, b"x", masked=False), 1002, "masked"),
    (client_frame(PING, b"x", fin=False), 1002, "fragmented control"),
    (client_frame(PING, b"x" * 126), 1002, "125"),
    (client_frame(CONT, b"x"), 1002, "continuation"),
    (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), 1002, "was finished"),
    (client_frame(BINARY, b"x" * 10, width=16), 1002, "minimally"),
    (client_frame(BINARY, b"x" * 200, width=64), 1002, "minimally"),
    (client_frame(BINARY, length=1 << 63 | 1 << 20), 1002, "top bit"),
    (client_frame(TEXT, b"\xff\xfe"), 1007, "UTF-8"),
    (client_frame(TEXT, b"ok \xe2\x82", fin=True), 1007, "UTF-8"),  # cut short
    (client_frame(TEXT, b"\xc0\xaf", fin=False), 1007, "UTF-8"),  # found before the end
    (client_frame(CLOSE, b"\x03"), 1002, "1-byte"),
    (client_frame(CLOSE, b"\x03\xed"), 1002, "1005"),
    (client_frame(CLOSE, b"\x03\xe8\xff"), 1007, "UTF-8"),
    (client_frame(BINARY, length=1 << 62), 1009, "over"),
    (client_frame(BINARY, b"x" * 60, fin=False) + client_frame(CONT, b"y" * 60), 1009, "over"),
]


@pytest.mark.parametrize(("data", "code", "words"), BAD)
def test_violations_get_their_close_code(data: bytes, code: int, words: str) -> None:
    frames = wsframes.InboundFrames(100)
    good = client_frame(TEXT, b"fine") + client_frame(PING)
    accepted = frames.feed(good + data)
    assert frames.violation is not None and frames.violation.code == code
    assert words in frames.violation.reason
    assert len(good) <= accepted < len(good) + len(data)  # the good frames go on
    assert frames.feed(b"more") == 0  # and nothing after


def test_an_oversized_frame_is_refused_at_its_header() -> None:
    frames = wsframes.InboundFrames(1 << 20)
    head = client_frame(BINARY, length=1 << 62)
    assert frames.feed(head[:5]) == 5  # not yet known
    assert frames.feed(head[5:]) == 0
    assert frames.violation == wsframes.Violation(1009, "a message over 1048576 bytes")


def test_close_frame_carries_code_and_a_cut_reason() -> None:
    assert wsframes.close_frame(1002, "x" * 200) == b"\x88\x7d\x03\xea" + b"x" * 123


frame_specs = st.tuples(
    st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xF]),
    st.one_of(st.binary(max_size=140), st.text(max_size=40).map(str.encode)),
    st.booleans(),  # fin
    st.sampled_from([0, 0, 0, 0, 1, 4]),  # rsv
    st.sampled_from([True, True, True, False]),  # masked
)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.lists(frame_specs, max_size=6), st.integers(1, 50))
def test_inbound_frames_agree_with_wsproto(specs: list[tuple[Any, ...]], chunk: int) -> None:
    """Whatever a client sends, InboundFrames fails the connection exactly when wsproto
    would, with the same code: so wsproto never meets a violation it would end with a
    bare TCP close."""
    from wsproto.frame_protocol import FrameProtocol, ParseFailed

    data = b"".join(
        client_frame(op, payload, fin=fin, rsv=rsv, masked=masked)
        for op, payload, fin, rsv, masked in specs
    )
    protocol = FrameProtocol(client=False, extensions=[])
    expected = None
    try:
        protocol.receive_bytes(data)
        for frame in protocol.received_frames():
            if frame.opcode == 0x8:
                break  # after a close, the rest is trio-websocket's
    except ParseFailed as exc:
        expected = int(exc.code)
    frames = wsframes.InboundFrames(1 << 20)
    for start in range(0, len(data), chunk):
        frames.feed(data[start : start + chunk])
    assert (frames.violation.code if frames.violation else None) == expected, frames.violation


@pytest.mark.parametrize("early", [False, True], ids=["after", "with-the-request"])
async def test_a_violation_gets_a_close_frame_then_the_end(early: bool) -> None:
    """ReplayStream through trio-websocket: a bad frame (sent after the handshake, or in
    the same read as the request) gets a close frame with its code, then the end of the
    stream; trio-websocket sees the connection end. A good message before it is
    delivered."""
    client, server = trio.testing.memory_stream_pair()
    bad = client_frame(TEXT, b"\xff")
    good = client_frame(TEXT, b"hello")
    delivered: list[str | bytes] = []

    async def serve() -> None:
        request, trailing = parse_request(UPGRADE + (good + bad if early else b""))
        replay = ReplayStream(
            server, request_bytes(request, b""), wsframes.InboundFrames(100), trailing
        )
        async with trio.open_nursery() as nursery:
            ws = await (await trio_websocket.wrap_server_stream(nursery, replay)).accept()
            replay.opened(ws)
            with pytest.raises(ConnectionClosed):
                while True:
                    delivered.append(await ws.get_message())
            nursery.cancel_scope.cancel()
        assert replay.violation == wsframes.Violation(1007, "text message is not UTF-8")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await client.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 101")
            if not early:
                await client.send_all(good + bad)
            rest = data.partition(b"\r\n\r\n")[2]
            while chunk := await client.receive_some(4096):
                rest += chunk
            assert rest == wsframes.close_frame(1007, "text message is not UTF-8")
    # Sent with the request, it is still in wsproto's buffer when the stream ends.
    assert delivered == ([] if early else ["hello"])
