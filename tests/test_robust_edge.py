"""Robustness at the broker's edge (issue 9): what a client sends over HTTP and WebSocket
cannot end the broker, gets the documented answer, and leaves other viewers alone.

Each test drives a real ``broker run`` with one test-pattern camera while a raw viewer
(`survival.Viewer`) watches it, attacks it with real sockets, then checks that the
broker is still up, the viewer kept >= 90% of its frame rate, and the attacker got the
answer docs/protocol.md promises. The last tests inject faults into an in-process broker
to check the exact answers of the error boundary (500, close 1011, ``internal_error``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import zmq
from helpers import config, publisher, running_broker, sample_jpeg
from procs import BrokerProcess, synthetic_camera, wait_until, write_config
from rawws import BINARY, CONT, PING, TEXT, RawWebSocket, client_frame
from survival import Viewer

from benchmarks.procs import free_port
from broker.protocol import stamp

FPS = 10.0
CAMERA = synthetic_camera("cam", 320, 240, FPS)
UPGRADE_HEADERS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"


def strict_json(data: str | bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN, no Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


@contextlib.contextmanager
def broker_with_viewer(
    tmp_path: Path,
    server: str = "",
    tokens: str = "",
    token: str | None = None,
    control: str = "",
    cameras: str = "",
) -> Iterator[tuple[BrokerProcess, Viewer]]:
    """A running broker (stopped by its PID at the end) and a viewer of its camera."""
    path = write_config(tmp_path, f"[server]\n{server}\n{CAMERA}{cameras}{tokens}")
    if control:  # in place of write_config's empty control endpoints
        path.write_text(
            path.read_text().replace("[control]\nendpoints = []\n", f"[control]\n{control}\n")
        )
    with BrokerProcess(path, token=token) as broker:
        broker.wait_online("cam")
        query = f"?token={token}" if token else ""
        with Viewer(broker.port, "cam", query) as viewer:
            yield broker, viewer
        assert broker.process is not None and broker.process.poll() is None, broker.logs()


def kept(viewer: Viewer, start: float, window: float = 3.0) -> None:
    """The viewer kept its rate since ``start``, over at least ``window`` seconds (a
    shorter attack is watched for a while after it)."""
    time.sleep(max(0.0, start + window - time.monotonic()))
    viewer.assert_kept(FPS, since=start)


def health(broker: BrokerProcess, token: str | None = None) -> dict[str, Any]:
    status, _, body = trio.run(exchange, broker.port, request("GET", "/healthz", token))
    assert status == 200, body
    return strict_json(body)


def request(
    method: str, path: str, token: str | None = None, extra: str = "", body: bytes = b""
) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{length}{extra}\r\n"
    ).encode() + body


def upgrade(path: str, key: str | None = None, extra: str = "") -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE_HEADERS}Sec-WebSocket-Key: {key}\r\n"
        f"{extra}\r\n"
    ).encode()


async def exchange(
    port: int, raw: bytes, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes from ``source``; the status, headers and body of the answer
    (the head alone for a 101)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed without an answer: {data!r}"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            headers = dict(
                line.decode("latin-1").lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
            )
            status = int(head.split(b" ")[1])
            while status != 101 and len(body) < int(headers.get("content-length", 0)):
                chunk = await stream.receive_some(65536)
                assert chunk, "closed in the middle of the body"
                body += chunk
    return status, headers, body


@contextlib.asynccontextmanager
async def websocket(port: int, path: str, source: str = "127.0.0.1") -> AsyncIterator[RawWebSocket]:
    """A raw WebSocket client, connected from ``source`` and past the handshake; closed
    at the end."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    ws = RawWebSocket(stream)
    try:
        await stream.send_all(upgrade(path))
        with trio.fail_after(10):
            while b"\r\n\r\n" not in ws.buffer:
                assert await ws._fill(4096), "closed during the handshake"
        head, _, rest = bytes(ws.buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        ws.buffer = bytearray(rest)
        yield ws
    finally:
        await ws.aclose()


async def close_code(ws: RawWebSocket, within: float = 5.0) -> int | None:
    """The code of the close frame the broker sends next (frames and texts skipped);
    None if it closes the TCP connection without one. Then the connection must end."""
    with trio.fail_after(within):
        while (message := await ws.receive()) is not None:
            opcode, payload = message
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if payload else 1005
                assert await ws.receive() is None, "data after the close frame"
                return code
    return None


# -- crash 1: clients dropping during the handshake -------------------------------------


def drop_during_handshake(port: int, count: int) -> None:
    """``count`` connections at once, half sending an upgrade request, then all dropped,
    half of them with a reset (SO_LINGER 0)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)
        ]
        for number, sock in enumerate(sockets):
            if number % 2 == 0:
                sock.sendall(upgrade("/cameras/cam"))
        for number, sock in enumerate(sockets):
            if number % 4 < 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


@pytest.mark.timeout(90)
def test_clients_dropping_during_the_handshake_are_not_a_fault(tmp_path: Path) -> None:
    with broker_with_viewer(tmp_path) as (broker, viewer):
        start = time.monotonic()
        for _ in range(5):
            drop_during_handshake(broker.port, 200)
            time.sleep(0.3)
        time.sleep(1.0)
        kept(viewer, start)
        assert health(broker)["faults"] == {}  # a client leaving is not a fault
        assert "Traceback" not in broker.logs()


# -- the opening handshake ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_handshakes_are_refused_before_accepting(tmp_path: Path) -> None:
    cases = [
        (upgrade("/cameras/cam", key="not-a-key"), 400, "Sec-WebSocket-Key"),
        (
            upgrade("/ws", key=base64.b64encode(b"15 bytes only!!").decode()),
            400,
            "Sec-WebSocket-Key",
        ),
        (upgrade("/ws").replace(b"Version: 13", b"Version: 8"), 426, "version 13"),
        # Headers wsproto would decode and fail on, inside the connection's reader task.
        (upgrade("/cameras/cam").replace(b"Host: x", b"Host: xn--zz"), 400, "Host"),
        (
            upgrade("/ws", extra="Sec-WebSocket-Protocol: caf\xe9\r\n").replace(
                b"caf\xc3\xa9", b"caf\xe9"
            ),
            400,
            "ASCII",
        ),
    ]
    with broker_with_viewer(tmp_path) as (broker, viewer):
        start = time.monotonic()
        for raw, status, words in cases:
            got, headers, body = trio.run(exchange, broker.port, raw)
            assert got == status, (raw, got, body)
            answer = strict_json(body)
            assert answer["error"] and words in answer["message"], answer
            if status == 426:
                assert headers["sec-websocket-version"] == "13"
        status, _, _ = trio.run(exchange, broker.port, upgrade("/cameras/cam"))
        assert status == 101  # a good key still passes
        kept(viewer, start)
        assert health(broker)["faults"] == {}


# -- protocol violations ----------------------------------------------------------------


VIOLATIONS = [
    ("reserved bits", client_frame(TEXT, b"{}", rsv=4), 1002),
    ("unknown opcode", client_frame(0x3, b"x"), 1002),
    ("unmasked", client_frame(TEXT, b"{}", masked=False), 1002),
    ("fragmented ping", client_frame(PING, b"p", fin=False), 1002),
    ("long ping", client_frame(PING, b"p" * 126), 1002),
    ("lone continuation", client_frame(CONT, b"x"), 1002),
    ("64-bit top bit", client_frame(BINARY, length=1 << 63 | 5), 1002),
    ("not UTF-8", client_frame(TEXT, b'{"type": "\xff"}'), 1007),
    # Only the header is sent: the broker must decide before any payload arrives.
    ("claims 2^62 bytes", client_frame(BINARY, length=1 << 62), 1009),
]


@pytest.mark.timeout(90)
def test_protocol_violations_get_a_close_frame_with_their_code(tmp_path: Path) -> None:
    async def attack(port: int) -> list[tuple[str, str, int | None]]:
        results = []
        for path in ("/cameras/cam", "/ws"):
            for name, data, _ in VIOLATIONS:
                async with websocket(port, path) as ws:
                    await ws.stream.send_all(data)
                    results.append((path, name, await close_code(ws, within=3.0)))
        # A text message over /ws's 1 MiB: refused at its header too.
        async with websocket(port, "/ws") as ws:
            await ws.stream.send_all(client_frame(TEXT, length=2 << 20))
            results.append(("/ws", "2 MiB message", await close_code(ws, within=3.0)))
        return results

    with broker_with_viewer(tmp_path) as (broker, viewer):
        start = time.monotonic()
        results = trio.run(attack, broker.port)
        expected = [
            (path, name, code) for path in ("/cameras/cam", "/ws") for name, _, code in VIOLATIONS
        ] + [("/ws", "2 MiB message", 1009)]
        assert results == expected
        kept(viewer, start)
        assert health(broker)["faults"] == {}


# -- /ws: JSON and request rate -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_non_finite_numbers_are_refused_and_never_sent(tmp_path: Path) -> None:
    async def attack(port: int) -> list[Any]:
        async with websocket(port, "/ws") as ws:
            answers = []
            for request_text in (
                '{"type": "ping", "request_id": 1e400}',
                '{"type": "ping", "request_id": 7, "data": [-1e999]}',
                '{"type": "ping", "request_id": 8, "data": 1.5}',
            ):
                await ws.send(request_text)
                opcode, payload = await ws.next_frame()
                assert opcode == 0x1
                answers.append(strict_json(payload))  # the broker's answers are JSON
        return answers

    with broker_with_viewer(tmp_path) as (broker, viewer):
        start = time.monotonic()
        refused, refused_too, echoed = trio.run(attack, broker.port)
        assert (refused["type"], refused["code"], refused["request_id"]) == (
            "error",
            "invalid_json",
            None,
        )
        assert "out of range" in refused["message"]
        assert (refused_too["code"], refused_too["request_id"]) == ("invalid_json", None)
        assert (echoed["type"], echoed["data"], echoed["request_id"]) == ("pong", 1.5, 8)
        status, _, body = trio.run(
            exchange,
            broker.port,
            request("PATCH", "/api/cameras/cam/settings", body=b'{"brightness": 1e400}'),
        )
        assert status == 400 and strict_json(body)["error"] == "invalid_json"
        kept(viewer, start)


@pytest.mark.timeout(90)
def test_subscription_churn_is_rate_limited_and_quiet(tmp_path: Path) -> None:
    """A client cycling subscribe/unsubscribe as fast as it can: requests beyond
    ``server.ws_request_rate`` get ``rate_limited`` (the connection stays up), and the
    broker's log grows by a few lines, not a line per request."""
    rate, seconds = 20, 4.0

    async def churn(port: int) -> Counter[str]:
        async with websocket(port, "/ws") as ws:
            answers: Counter[str] = Counter()
            sent = 0

            async def read() -> None:
                while (message := await ws.receive()) is not None:
                    if message[0] == 0x1:
                        answer = strict_json(message[1])
                        answers[answer.get("code") or answer["type"]] += 1
                        answers["answered"] += answer.get("request_id") is not None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                with trio.move_on_after(seconds):
                    while True:
                        kind = "subscribe" if sent % 2 == 0 else "unsubscribe"
                        request = {"type": kind, "camera": "cam", "request_id": sent}
                        await ws.send(json.dumps(request))
                        sent += 1
                        while sent - answers["answered"] > 100:  # as fast as the answers come
                            await trio.sleep(0.001)
                await trio.sleep(1.0)  # the rate allows a request again
                await ws.send('{"type": "ping", "request_id": "still-up"}')
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
        answers["sent"] = sent
        return answers

    with broker_with_viewer(tmp_path, server=f"ws_request_rate = {rate}") as (broker, viewer):
        start = time.monotonic()
        log_before = broker.log.stat().st_size
        answers = trio.run(churn, broker.port)
        growth = broker.log.stat().st_size - log_before
        served = answers["subscribed"] + answers["unsubscribed"] + answers["not_subscribed"]
        assert answers["rate_limited"] > answers["sent"] / 2, answers
        assert served <= rate * (seconds + 2) + rate, answers  # the burst, then the rate
        assert answers["pong"] == 1, answers  # the connection is still up
        assert growth < 8_000, f"{growth} bytes of log for {answers['sent']} requests"
        kept(viewer, start)


# -- tokens: throttle and hygiene ---------------------------------------------------------

OPERATOR = "Zq9Xw-operator-secret-0001"
VIEWER = "Vb7Kp-viewer-secret-000002"
SHORT = "k3yZ-9ab1"  # 9 characters: the config needs 8, the broker warns below 16
TOKENS = (
    f'[[tokens]]\ntoken = "{OPERATOR}"\nrole = "operator"\n'  # no name: a hash in the log
    f'[[tokens]]\ntoken = "{VIEWER}"\nrole = "viewer"\nname = "wall"\n'
    f'[[tokens]]\ntoken = "{SHORT}"\nrole = "viewer"\n'
)


@pytest.mark.timeout(60)
def test_wrong_tokens_are_throttled_per_address(tmp_path: Path) -> None:
    server = "auth_failure_burst = 3\nauth_failure_rate = 1.0"
    guesser = "127.0.0.7"

    async def attack(port: int) -> None:
        for number in range(3):
            status, _, _ = await exchange(
                port, request("GET", "/api/cameras", f"guess-{number}"), guesser
            )
            assert status == 401
        for token in ("guess-3", VIEWER):  # beyond the burst, even a right token waits
            status, headers, body = await exchange(
                port, request("GET", "/api/cameras", token), guesser
            )
            assert status == 429 and headers["retry-after"] == "1", body
            answer = strict_json(body)
            assert answer["error"] == "too_many_failed_tokens" and "retry" in answer["message"]
        status, headers, _ = await exchange(port, upgrade(f"/cameras/cam?token={VIEWER}"), guesser)
        assert status == 429 and headers["retry-after"] == "1"  # at the handshake too
        # Other addresses are not held up.
        status, _, _ = await exchange(port, request("GET", "/api/cameras", VIEWER))
        assert status == 200
        await trio.sleep(1.1)  # Retry-After
        status, _, _ = await exchange(port, request("GET", "/api/cameras", VIEWER), guesser)
        assert status == 200
        status, _, _ = await exchange(port, request("GET", "/api/cameras", "guess-4"), guesser)
        assert status == 401  # one more guess a second, then 429 again
        status, _, _ = await exchange(port, request("GET", "/api/cameras", "guess-5"), guesser)
        assert status == 429

    with broker_with_viewer(tmp_path, server, TOKENS, VIEWER) as (broker, viewer):
        start = time.monotonic()
        trio.run(attack, broker.port)
        kept(viewer, start)
        label = "token " + hashlib.sha256(SHORT.encode()).hexdigest()[:8]
        assert f"{label} is shorter than 16 characters" in broker.logs()
        assert "wall is shorter" not in broker.logs()


@pytest.mark.timeout(90)
def test_no_token_in_any_log_line_or_error_body(tmp_path: Path) -> None:
    wrong = "Wr0ngGuess-7788-not-a-token"
    attacker = "127.0.0.9"
    secrets = (OPERATOR, VIEWER, SHORT, wrong, OPERATOR[:4], VIEWER[:4], SHORT[:4])

    def check(body: bytes) -> None:
        for secret in secrets:
            assert secret.encode() not in body, (secret, body)

    async def misuse(port: int) -> None:
        async def send(raw: bytes, source: str = "127.0.0.1") -> int:
            status, _, body = await exchange(port, raw, source)
            check(body)
            return status

        # Malformed requests whose request line or headers carry a token.
        assert await send(f"GET /api/cameras?token={OPERATOR} HTTP/1.1 x\r\n\r\n".encode()) == 400
        assert (
            await send(
                f"GET /?token={VIEWER} HTTP/1.1\r\nHost: x\r\nbad line {VIEWER}\r\n\r\n".encode()
            )
            == 400
        )
        assert (
            await send(
                request(
                    "POST",
                    f"/cameras/cam/frames?token={OPERATOR}",
                    extra="Transfer-Encoding: chunked\r\n",
                )
                + f"zz{OPERATOR}\r\n".encode()
            )
            == 400
        )
        # Refusals: 401, 403, 404, 400 at a handshake, 429.
        assert await send(request("GET", f"/api/cameras?token={wrong}")) == 401
        assert await send(request("GET", "/api/stats", wrong)) == 401
        assert (
            await send(request("PATCH", f"/api/cameras/cam/settings?token={VIEWER}", body=b"{}"))
            == 403
        )
        assert await send(request("GET", f"/nothing/here?token={VIEWER}")) == 404
        assert await send(request("GET", f"/cameras/cam/mjpeg?token={VIEWER}&fps=x")) == 400
        assert await send(upgrade(f"/cameras/nope?token={VIEWER}")) == 404
        assert await send(upgrade(f"/ws?token={wrong}")) == 401
        assert await send(upgrade(f"/ws?token={VIEWER}", key="bad")) == 400
        for _ in range(12):
            await send(request("GET", f"/api/cameras?token={wrong}"), attacker)
        assert await send(request("GET", f"/api/cameras?token={OPERATOR}"), attacker) == 429
        # /ws errors, on a connection opened with a token in its URL.
        async with websocket(port, f"/ws?token={VIEWER}") as ws:
            for message in (
                "{not json",
                '{"type": "command", "camera": "cam", "command": '
                '"update_settings", "settings": {}}',
                '{"type": "dance"}',
                '{"type": "subscribe", "camera": "nope"}',
            ):
                await ws.send(message)
                _, payload = await ws.next_frame()
                check(payload)
            await ws.stream.send_all(client_frame(TEXT, b"\xff"))
            assert await close_code(ws) == 1007

    with broker_with_viewer(tmp_path, tokens=TOKENS, token=VIEWER) as (broker, viewer):
        start = time.monotonic()
        trio.run(misuse, broker.port)
        kept(viewer, start)
        time.sleep(0.5)  # the last log lines
        logs = broker.logs()
        assert "connected to /ws (wall)" in logs  # tokens are named by their name
        for secret in secrets:
            assert secret not in logs, f"{secret} in the log"


# -- the error boundary: a real broker fed bad data by a peer ---------------------------------


@pytest.mark.timeout(60)
def test_data_that_cannot_be_json_costs_an_answer_not_the_broker(tmp_path: Path) -> None:
    """A worker's hello and reply carrying msgpack bytes keys (crash 5 of the issue): the
    HTTP and /ws clients that ask for them get a valid JSON answer (the data, once the
    control channel refuses it, else 500 / ``internal_error``), never invalid JSON, and
    the broker and its viewers carry on."""
    control_port = free_port()
    control = f'endpoints = ["tcp://127.0.0.1:{control_port}"]'
    external = '[[cameras]]\nid = "ext"\n'
    context = zmq.Context()
    worker = context.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.setsockopt(zmq.ROUTING_ID, b"ext")
    try:
        with broker_with_viewer(tmp_path, control=control, cameras=external) as (broker, viewer):
            start = time.monotonic()
            worker.connect(f"tcp://127.0.0.1:{control_port}")
            worker.send(
                msgpack.packb(
                    {
                        "type": "hello",
                        "version": 1,
                        "camera": "ext",
                        "device": "fake",
                        "supported": {},
                        "settings": {b"raw-key": 1},
                        "streaming": True,
                        "pid": os.getpid(),
                    }
                )
            )
            wait_until(
                lambda: (
                    health(broker)["control"]["workers_connected"] == 2
                    or health(broker)["control"]["errors"].get("bad_value")
                ),
                10,
                "the hello was neither taken nor refused",
            )

            async def watch_events(port: int) -> list[Any]:
                async with websocket(port, "/ws") as ws:
                    worker.send(
                        msgpack.packb(
                            {
                                "type": "reply",
                                "version": 1,
                                "request_id": "r1",
                                "success": True,
                                "message": "",
                                "settings": {b"raw-key": 2},
                                "streaming": True,
                                "timestamp": time.time(),
                            }
                        )
                    )
                    await trio.sleep(1.0)
                    await ws.send('{"type": "list_cameras", "request_id": 1}')
                    await ws.send('{"type": "ping", "request_id": 2}')
                    texts: list[Any] = []
                    with trio.fail_after(5):
                        while not texts or texts[-1].get("type") != "pong":
                            opcode, payload = await ws.next_frame()
                            if opcode == 0x1:
                                texts.append(strict_json(payload))
                return texts

            texts = trio.run(watch_events, broker.port)
            answer = next(t for t in texts if t.get("request_id") == 1)
            assert answer["type"] == "cameras" or answer["code"] == "internal_error", answer
            status, _, body = trio.run(exchange, broker.port, request("GET", "/api/cameras"))
            answer = strict_json(body)
            assert status == 200 or (status, answer["error"]) == (500, "internal_error")
            kept(viewer, start)
            assert health(broker)["status"] == "ok"
    finally:
        context.destroy(linger=0)


# -- the error boundary's exact answers, with a fault injected in-process ------------------


class Injected(Exception):
    """A stand-in for a bug."""


@pytest.mark.timeout(30)
async def test_a_fault_in_a_route_is_a_500_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_broker(config()) as broker:

        def broken(*args: object) -> None:
            raise Injected("a bug")

        monkeypatch.setattr(broker.server.views, "stats", broken)
        port = broker.port
        status, _, body = await exchange(port, request("GET", "/api/stats"))
        assert status == 500
        assert strict_json(body) == {
            "error": "internal_error",
            "message": "the broker failed on this request",
        }
        assert "a bug" not in body.decode()  # nothing of the inside goes out
        status, _, body = await exchange(port, request("GET", "/healthz"))
        answer = strict_json(body)
        assert answer["faults"] == {"http": 1} and answer["http_errors"]["500"] == 1


@pytest.mark.timeout(30)
async def test_a_fault_while_serving_a_camera_websocket_closes_it_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pub.stream, "a", 20.0, sample_jpeg(160, 120), 160, 120)
            async with websocket(broker.port, "/cameras/a") as ws:
                assert (await ws.receive() or (0,))[0] == 0x2  # frames flow
                original = broker.server.delivery.send_frames

                async def broken(*args: Any, **kwargs: Any) -> None:
                    raise Injected("a bug")

                monkeypatch.setattr(broker.server.delivery, "send_frames", broken)
                async with websocket(broker.port, "/cameras/a") as second:
                    assert await close_code(second) == 1011
                monkeypatch.setattr(broker.server.delivery, "send_frames", original)
                with trio.fail_after(5):  # the first client never noticed
                    for _ in range(5):
                        message = await ws.receive()
                        assert message is not None and message[0] == 0x2
            assert broker.faults.as_dict() == {"websocket": 1}
            nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_faults_on_ws_cost_an_internal_error_not_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event that cannot be JSON, and a subscription whose sender fails: each is an
    ``internal_error`` on /ws (the subscription ends, the connection stays up)."""
    async with running_broker(config()) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pub.stream, "a", 20.0, sample_jpeg(160, 120), 160, 120)
            async with websocket(broker.port, "/ws") as ws:

                async def next_text() -> dict[str, Any]:
                    """The next answer or error; events (camera_online...) skipped."""
                    with trio.fail_after(5):
                        while True:
                            opcode, payload = await ws.next_frame()
                            if opcode == 0x1 and (text := strict_json(payload))["type"] != "event":
                                return text

                await trio.sleep(0.2)  # the event forwarder listens
                broker.control.events.publish("settings_changed", "a", settings={b"key": 1})
                nan = float("nan")
                broker.control.events.publish("settings_changed", "a", settings={"gain": nan})
                for _ in range(2):
                    error = await next_text()
                    assert (error["type"], error["code"]) == ("error", "internal_error"), error

                async def broken(*args: Any, **kwargs: Any) -> None:
                    raise Injected("a bug")

                monkeypatch.setattr(broker.server.delivery, "send_frames", broken)
                await ws.send('{"type": "subscribe", "camera": "a", "request_id": 1}')
                assert (await next_text())["type"] == "subscribed"
                error = await next_text()
                assert (error["code"], error["request_id"]) == ("internal_error", None)
                assert "'a'" in error["message"]
                await ws.send('{"type": "ping", "request_id": 2}')
                assert (await next_text())["type"] == "pong"  # still up
            assert broker.faults.as_dict() == {"ws_api": 3}
            nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_unsubscribing_never_leaves_half_a_frame_on_ws() -> None:
    """A slow /ws reader unsubscribing and subscribing again while large frames are being
    written: every message it reads is whole (an unsubscribe used to cancel a write
    half-way, and the rest of the connection was garbage)."""
    big = sample_jpeg(1920, 1080, 95)
    async with running_broker(config()) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pub.stream, "a", 30.0, big, 1920, 1080)
            async with websocket(broker.port, "/ws") as ws:
                frames = 0

                async def read() -> None:
                    nonlocal frames
                    while (message := await ws.receive(chunk=16384, pace=2_000_000)) is not None:
                        opcode, payload = message
                        assert opcode in (0x1, 0x2), f"opcode {opcode:#x}: not a whole message"
                        if opcode == 0x2:
                            (length,) = struct.unpack(">H", payload[:2])
                            assert strict_json(payload[2 : 2 + length])["camera"] == "a"
                            image = payload[2 + length :]  # the frame, with the publisher's stamp
                            assert len(image) == len(big) + 4 + stamp.STAMP_LEN
                            assert image.endswith(big[-65536:])
                            frames += 1
                        else:
                            strict_json(payload)

                async with trio.open_nursery() as readers:
                    readers.start_soon(read)
                    for _ in range(25):
                        await ws.send('{"type": "subscribe", "camera": "a"}')
                        await trio.sleep(0.13)
                        await ws.send('{"type": "unsubscribe", "camera": "a"}')
                        await trio.sleep(0.02)
                    readers.cancel_scope.cancel()
            assert frames >= 5
            nursery.cancel_scope.cancel()
