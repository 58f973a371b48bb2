"""The multiplexed WebSocket ``/ws``, tokens and the settings API, with real sockets: an
in-process broker fed by a ZeroMQ publisher, and a real broker process with its camera
workers for commands that must reach a camera."""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest
import trio
from helpers import config, get, http, publisher, read_stamp, running_broker, sample_jpeg
from procs import BrokerProcess, synthetic_camera, write_config
from rawws import RawWebSocket

from broker.app import Broker
from broker.core.camera import CameraInfo
from broker.core.frame import Frame
from broker.core.hub import Hub
from broker.serve.server import Server
from broker.serve.wsrequests import MAX_REQUEST, RequestError, parse_request, request_id_of

if TYPE_CHECKING:
    from playwright.sync_api import Page

TWO = '[[cameras]]\nid = "a"\n[[cameras]]\nid = "b"\n'
TOKENS = (
    '[[tokens]]\ntoken = "viewer-secret"\nrole = "viewer"\nname = "wall"\n'
    '[[tokens]]\ntoken = "operator-secret"\nrole = "operator"\n'
    '[[tokens]]\ntoken = "only-a-secret"\nrole = "viewer"\ncameras = ["a"]\n'
)
VIEWER = "Authorization: Bearer viewer-secret\r\n"
OPERATOR = "Authorization: Bearer operator-secret\r\n"
ONLY_A = "Authorization: Bearer only-a-secret\r\n"


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


def split_frame(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack(">H", payload[:2])
    return json.loads(payload[2 : 2 + length]), payload[2 + length :]


class Mux:
    """A /ws client that keeps text messages and frames apart as they arrive."""

    def __init__(self, raw: RawWebSocket) -> None:
        self.raw = raw
        self.texts: list[dict[str, Any]] = []
        self.frames: list[tuple[dict[str, Any], bytes]] = []

    async def send(self, request: dict[str, Any] | str | bytes) -> None:
        await self.raw.send(json.dumps(request) if isinstance(request, dict) else request)

    async def _next(self) -> None:
        message = await self.raw.receive()
        if message is None:
            raise Closed(None)
        opcode, payload = message
        if opcode == 1:
            self.texts.append(json.loads(payload))
        elif opcode == 2:
            self.frames.append(split_frame(payload))
        elif opcode == 8:
            raise Closed(struct.unpack(">H", payload[:2])[0] if payload else None)

    async def text(
        self, match: Callable[[dict[str, Any]], bool] = lambda m: True, within: float = 10
    ) -> dict[str, Any]:
        """The first text message that ``match``es (others stay queued); frames meanwhile
        are kept in ``frames``."""
        with trio.fail_after(within):
            while True:
                for i, message in enumerate(self.texts):
                    if match(message):
                        return self.texts.pop(i)
                await self._next()

    async def reply(self, request_id: Any, within: float = 10) -> dict[str, Any]:
        return await self.text(lambda m: m.get("request_id") == request_id, within)

    async def event(self, name: str, within: float = 10) -> dict[str, Any]:
        return await self.text(lambda m: m["type"] == "event" and m["event"] == name, within)

    async def request(self, request: dict[str, Any], within: float = 10) -> dict[str, Any]:
        await self.send(request)
        return await self.reply(request["request_id"], within)

    async def frame(self, within: float = 10) -> tuple[dict[str, Any], bytes]:
        with trio.fail_after(within):
            while not self.frames:
                await self._next()
        return self.frames.pop(0)

    async def collect(self, seconds: float) -> None:
        """Read everything that arrives for ``seconds``."""
        with trio.move_on_after(seconds):
            while True:
                await self._next()


@asynccontextmanager
async def mux(port: int, headers: str = "", path: str = "/ws") -> AsyncIterator[Mux]:
    raw, head = await RawWebSocket.connect(port, path, headers)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        yield Mux(raw)
    finally:
        await raw.aclose()


async def handshake(port: int, path: str, headers: str = "") -> bytes:
    """The status line and headers the server answers an upgrade with."""
    raw, head = await RawWebSocket.connect(port, path, headers)
    await raw.aclose()
    return head


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


# -- pure parts ------------------------------------------------------------------------


def test_mux_message_is_built_once_and_released() -> None:
    jpeg = sample_jpeg(64, 48)
    frame = Frame("lobby", 7, 1763700000.5, 64, 48, "jpeg", memoryview(jpeg), 0.0)
    parts = frame.mux_message()
    assert frame.mux_message() is parts  # built once, shared by every client
    (message,) = parts  # a small frame: one joined buffer
    assert message[0] == 0x82 and message[1] == 126  # one binary frame, 16-bit length
    (length,) = struct.unpack(">H", message[2:4])
    assert length == len(message) - 4
    header, image = split_frame(bytes(message[4:]))
    assert header == {
        "camera": "lobby",
        "seq": 7,
        "captured_at": 1763700000.5,
        "format": "jpeg",
        "width": 64,
        "height": 48,
    }
    assert image == jpeg
    frame.release_messages()
    rebuilt = frame.mux_message()
    assert rebuilt == parts and rebuilt is not parts
    placeholder = Frame("lobby", 7, 1.0, 64, 48, "jpeg", jpeg, 0.0, placeholder=True)
    assert split_frame(bytes(placeholder.mux_message()[0][4:]))[0]["placeholder"] is True


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"\x00binary", "binary_message"),
        ("x" * (MAX_REQUEST + 1), "too_large"),
        ('{"type": "ping", "data": "' + "\u00e9" * (MAX_REQUEST // 2) + '"}', "too_large"),
        ("{not json", "invalid_json"),
        ('{"type": "ping", "data": NaN}', "invalid_json"),
        ("[" * 60_000, "invalid_json"),  # nesting deeper than the parser's recursion limit
        ("[1, 2]", "invalid_message"),
        ('"ping"', "invalid_message"),
    ],
)
def test_parse_request_rejects(message: str | bytes, code: str) -> None:
    with pytest.raises(RequestError) as bad:
        parse_request(message)
    assert bad.value.code == code


def test_request_ids_are_strings_or_numbers() -> None:
    assert request_id_of({"request_id": "7"}) == "7"
    assert request_id_of({"request_id": 7}) == 7
    assert request_id_of({"request_id": 7.5}) == 7.5
    assert request_id_of({}) is None
    for bad in (True, [1], {"a": 1}):
        with pytest.raises(RequestError):
            request_id_of({"request_id": bad})


# -- /ws against an in-process broker ----------------------------------------------------


@pytest.mark.timeout(60)
async def test_one_connection_carries_two_cameras_with_their_headers() -> None:
    async with running_broker(config(TWO)) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 15.0, sample_jpeg(320, 240), 320, 240)
            n.start_soon(pub.stream, "b", 15.0, sample_jpeg(160, 120), 160, 120)
            async with mux(broker.port) as ws:
                reply = await ws.request({"type": "subscribe", "camera": "a", "request_id": 1})
                assert reply == {
                    "type": "subscribed",
                    "camera": "a",
                    "max_fps": None,
                    "request_id": 1,
                }
                reply = await ws.request({"type": "subscribe", "camera": "b", "request_id": "x"})
                assert reply["type"] == "subscribed" and reply["camera"] == "b"
                seen: dict[str, list[int]] = {"a": [], "b": []}
                with trio.fail_after(10):
                    while min(len(s) for s in seen.values()) < 10:
                        header, image = await ws.frame()
                        size = {"a": (320, 240), "b": (160, 120)}[header["camera"]]
                        assert (header["width"], header["height"]) == size
                        assert header["format"] == "jpeg"
                        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
                        assert decoded is not None and (decoded.shape[1], decoded.shape[0]) == size
                        seq, captured_at = read_stamp(image)
                        assert header["seq"] == seq
                        assert abs(header["captured_at"] - captured_at) < 1e-5
                        seen[header["camera"]].append(seq)
                for seqs in seen.values():
                    assert seqs == sorted(set(seqs))
                stats = await ws.request({"type": "get_stats", "request_id": "s"})
                kinds = {c["id"]: [s["kind"] for s in c["subscribers"]] for c in stats["cameras"]}
                assert kinds == {"a": ["ws-mux"], "b": ["ws-mux"]}
                assert stats["status"] == "ok" and stats["ws_connections"] == 1
            n.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_max_fps_paces_one_subscription_and_not_the_other() -> None:
    async with running_broker(config(TWO)) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 20.0, sample_jpeg(320, 240), 320, 240)
            n.start_soon(pub.stream, "b", 20.0, sample_jpeg(320, 240), 320, 240)
            async with mux(broker.port) as ws:
                reply = await ws.request(
                    {"type": "subscribe", "camera": "a", "max_fps": 2, "request_id": 1}
                )
                assert reply["max_fps"] == 2.0
                await ws.request({"type": "subscribe", "camera": "b", "request_id": 2})
                await ws.frame()
                ws.frames.clear()
                started = time.time()
                await ws.collect(3.0)
                counts = {"a": 0, "b": 0}
                captured = []
                for header, _ in ws.frames:
                    counts[header["camera"]] += 1
                    if header["camera"] == "a":
                        captured.append(header["captured_at"])
                assert 4 <= counts["a"] <= 8, counts  # 2 fps for 3 s
                assert counts["b"] >= 40, counts  # 20 fps, unpaced
                # Paced means the newest frame each time, not the next one queued (0.05 s on).
                gaps = [later - earlier for earlier, later in itertools.pairwise(captured)]
                assert min(gaps) > 0.3, gaps
                assert time.time() - started < 4
            n.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_unsubscribe_stops_frames_and_answers_every_time() -> None:
    async with running_broker(config(TWO)) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 20.0, sample_jpeg(160, 120), 160, 120)
            async with mux(broker.port) as ws:
                await ws.request({"type": "subscribe", "camera": "a", "request_id": 1})
                await ws.frame()
                reply = await ws.request({"type": "unsubscribe", "camera": "a", "request_id": 2})
                assert reply == {"type": "unsubscribed", "camera": "a", "request_id": 2}
                ws.frames.clear()
                await ws.collect(1.0)
                assert len(ws.frames) <= 1  # at most one already on its way
                reply = await ws.request({"type": "unsubscribe", "camera": "a", "request_id": 3})
                assert reply["type"] == "error" and reply["code"] == "not_subscribed"
                reply = await ws.request({"type": "unsubscribe", "camera": "zz", "request_id": 4})
                assert reply["code"] == "unknown_camera"
                # Subscribing again works, and a second subscribe only changes max_fps.
                await ws.request({"type": "subscribe", "camera": "a", "request_id": 5})
                reply = await ws.request(
                    {"type": "subscribe", "camera": "a", "max_fps": 5, "request_id": 6}
                )
                assert reply["type"] == "subscribed" and reply["max_fps"] == 5
                cameras = json.loads((await http(broker.port, get("/api/cameras")))[2])
                assert next(c for c in cameras if c["id"] == "a")["clients"] == 1
            n.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_ping_list_cameras_and_stats() -> None:
    async with running_broker(config(TWO)) as broker, mux(broker.port) as ws:
        before = time.time()
        pong = await ws.request({"type": "ping", "data": {"n": [1, 2]}, "request_id": 9})
        assert pong["type"] == "pong" and pong["data"] == {"n": [1, 2]}
        assert before <= pong["time"] <= time.time()
        pong = await ws.request({"type": "ping", "request_id": "p"})
        assert pong["data"] is None
        cameras = await ws.request({"type": "list_cameras", "request_id": "c"})
        assert cameras["type"] == "cameras"
        assert [c["id"] for c in cameras["cameras"]] == ["a", "b"]
        camera = cameras["cameras"][0]
        assert camera["online"] is False and camera["connected"] is False
        assert {"settings", "streaming", "on_demand"} <= camera.keys()
        stats = await ws.request({"type": "get_stats", "request_id": "s"})
        assert stats["type"] == "stats" and [c["id"] for c in stats["cameras"]] == ["a", "b"]
        assert "ingest" in stats and "ws_errors" in stats
        await ws.send({"type": "ping"})  # no request_id: answered all the same
        assert (await ws.text())["request_id"] is None


@pytest.mark.timeout(60)
async def test_bad_input_gets_errors_while_frames_keep_arriving() -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 15.0, sample_jpeg(320, 240), 320, 240)
            async with mux(broker.port) as ws:
                await ws.request({"type": "subscribe", "camera": "a", "request_id": 0})
                cases: list[tuple[str | bytes, str, Any]] = [
                    ("{this is not json", "invalid_json", None),
                    ('{"type": "dance", "request_id": 1}', "unknown_type", 1),
                    ('{"request_id": 2}', "invalid_field", 2),  # no type
                    ('{"type": "subscribe", "request_id": 3}', "invalid_field", 3),
                    ('{"type": "subscribe", "camera": 5, "request_id": 4}', "invalid_field", 4),
                    (
                        '{"type": "subscribe", "camera": "a", "max_fps": 0, "request_id": 5}',
                        "invalid_field",
                        5,
                    ),
                    # Beyond a float's range: not JSON the broker accepts (nor could echo).
                    (
                        '{"type": "subscribe", "camera": "a", "max_fps": 1e999, "request_id": 51}',
                        "invalid_json",
                        None,
                    ),
                    (
                        '{"type": "subscribe", "camera": "a", "max_fps": 1'
                        + "0" * 400
                        + ', "request_id": 52}',
                        "invalid_field",
                        52,
                    ),
                    (
                        '{"type": "subscribe", "camera": "zz", "request_id": "6"}',
                        "unknown_camera",
                        "6",
                    ),
                    ('{"type": "command", "camera": "a", "request_id": 7}', "invalid_field", 7),
                    (
                        '{"type": "command", "camera": "a", "command": "explode", "request_id": 8}',
                        "unknown_command",
                        8,
                    ),
                    (
                        '{"type": "command", "camera": "a", "command": "update_settings", '
                        '"settings": [1], "request_id": 9}',
                        "invalid_field",
                        9,
                    ),
                    ('{"type": "ping", "request_id": [1]}', "invalid_field", None),
                    ('["type", "ping"]', "invalid_message", None),
                    (
                        json.dumps({"type": "ping", "request_id": 10, "data": "x" * 200_000}),
                        "too_large",
                        None,
                    ),
                    (b"\xff\xd8 binary from the client", "binary_message", None),
                ]
                for message, code, request_id in cases:
                    ws.frames.clear()
                    await ws.send(message)
                    error = await ws.text(lambda m: m["type"] != "event")  # camera_online
                    assert error["type"] == "error", (message, error)
                    assert (error["code"], error["request_id"]) == (code, request_id), message
                    assert error["message"]
                    with trio.fail_after(5):  # the same connection still gets frames
                        while len(ws.frames) < 2:
                            await ws._next()
                health = json.loads((await http(broker.port, get("/healthz")))[2])
                assert health["ws_errors"] == {
                    "invalid_json": 2,
                    "unknown_type": 1,
                    "invalid_field": 8,
                    "unknown_camera": 1,
                    "unknown_command": 1,
                    "invalid_message": 1,
                    "too_large": 1,
                    "binary_message": 1,
                }
                # Beyond 1 MiB the connection is closed (1009), at the frame's header.
                await ws.send("x" * (1024 * 1024 + 1))
                with pytest.raises(Closed) as closed, trio.fail_after(10):
                    while True:
                        await ws._next()
                assert closed.value.code == 1009
            n.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_a_removed_camera_ends_its_subscription_and_nothing_else() -> None:
    cfg = config(ingest="http_sessions = true\nsession_ttl = 1.0")
    async with running_broker(cfg) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 10.0, sample_jpeg(160, 120), 160, 120)
            status, _, body = await http(broker.port, request("POST", "/api/sessions"))
            assert status == 201
            session = json.loads(body)["id"]
            async with mux(broker.port) as ws:
                await ws.request({"type": "subscribe", "camera": "a", "request_id": 1})
                await ws.request({"type": "subscribe", "camera": session, "request_id": 2})
                ended = await ws.text(lambda m: m["type"] == "unsubscribed")  # within ~2 s
                assert ended == {
                    "type": "unsubscribed",
                    "camera": session,
                    "request_id": None,
                    "reason": "camera_removed",
                }
                ws.frames.clear()
                await ws.frame()  # camera a goes on
                pong = await ws.request({"type": "ping", "request_id": 3})
                assert pong["type"] == "pong"
            assert (await http(broker.port, get("/ws")))[0] == 426  # not a plain HTTP route
            n.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_a_stalled_ws_client_is_cut_off_and_others_keep_their_rate() -> None:
    cfg = config(server="send_timeout = 1.5")
    async with running_broker(cfg) as broker, publisher(broker) as pub:
        async with trio.open_nursery() as n:
            n.start_soon(pub.stream, "a", 15.0)  # 720p, about 150 KB a frame
            stalled, head = await RawWebSocket.connect(broker.port, "/ws")
            assert head.startswith(b"HTTP/1.1 101")
            await stalled.send(json.dumps({"type": "subscribe", "camera": "a"}))
            async with mux(broker.port) as ws:
                await ws.request({"type": "subscribe", "camera": "a", "request_id": 1})
                await ws.collect(5.0)
                assert len(ws.frames) >= 0.8 * 15 * 5
                health = json.loads((await http(broker.port, get("/healthz")))[2])
                assert health["slow_client_disconnects"] == 1
            with trio.fail_after(5):  # the server closed it
                while await stalled.stream.receive_some(1 << 20):
                    pass
            await stalled.aclose()
            n.cancel_scope.cancel()


@pytest.mark.timeout(30)
async def test_shutdown_closes_ws_with_1001() -> None:
    async with trio.open_nursery() as outer:
        inner = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[Broker]) -> None:
            with inner:
                async with trio.open_nursery() as n:
                    task_status.started(await n.start(Broker(config()).run))

        broker = await outer.start(serve)
        async with mux(broker.port) as ws:
            await ws.request({"type": "subscribe", "camera": "a", "request_id": 1})
            started = time.monotonic()
            inner.cancel()
            with pytest.raises(Closed) as closed, trio.fail_after(5):
                while True:
                    await ws._next()
            assert closed.value.code == 1001
            assert time.monotonic() - started < 3


@pytest.mark.timeout(60)
async def test_events_reach_the_clients_that_may_see_the_camera() -> None:
    async with running_broker(config(TWO + TOKENS)) as broker, publisher(broker) as pub:
        async with mux(broker.port, VIEWER) as everything, mux(broker.port, ONLY_A) as only_a:
            # Both connections are up once each has answered a ping.
            await everything.request({"type": "ping", "request_id": 1})
            await only_a.request({"type": "ping", "request_id": 1})
            pub.send("b", sample_jpeg(160, 120), 160, 120)
            pub.send("a", sample_jpeg(160, 120), 160, 120)
            online = await everything.event("camera_online")
            again = await everything.event("camera_online")
            assert {online["camera"], again["camera"]} == {"a", "b"}
            assert online["data"]["width"] == 160 and online["timestamp"] > 0
            event = await only_a.event("camera_online")
            assert event["camera"] == "a"
            await only_a.request({"type": "ping", "request_id": 2})
            assert not [m for m in only_a.texts if m["type"] == "event"]  # nothing of b


# -- tokens -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_http_needs_a_valid_token_when_tokens_are_configured() -> None:
    async with running_broker(config(TWO + TOKENS)) as broker:
        port = broker.port
        for path in (
            "/api/cameras",
            "/healthz",
            "/",
            "/viewer.js",
            "/metrics",
            "/cameras/a/snapshot.jpg",
            "/nothing/here",
        ):
            status, headers, body = await http(port, get(path))
            assert status == 401, path
            assert headers["www-authenticate"].startswith("bearer")  # http() lower-cases
            assert json.loads(body)["error"] == "unauthorized"
        status, headers, _ = await http(
            port, request("GET", "/api/cameras", headers=("Authorization: Bearer wrong-secret\r\n"))
        )
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        assert (await http(port, get("/api/cameras?token=wrong-secret")))[0] == 401
        status, _, body = await http(port, request("GET", "/api/cameras", headers=VIEWER))
        assert status == 200 and [c["id"] for c in json.loads(body)] == ["a", "b"]
        status, _, body = await http(port, get("/api/cameras?token=viewer-secret"))
        assert status == 200
        # The page opened with ?token= loads its script and style with the token too.
        status, _, page = await http(port, get("/?token=viewer-secret"))
        assert status == 200
        assert b'src="/viewer.js?token=viewer-secret"' in page
        assert b'href="/viewer.css?token=viewer-secret"' in page
        status, _, script = await http(port, get("/viewer.js?token=viewer-secret"))
        assert status == 200 and b"withToken" in script
        # A CORS preflight carries no credentials: answered, and PATCH is allowed.
    cors = config(TWO + TOKENS, server='cors_origins = ["http://grafana.test"]')
    async with running_broker(cors) as broker:
        preflight = request(
            "OPTIONS", "/api/cameras/a/settings", headers="Origin: http://grafana.test\r\n"
        )
        status, headers, _ = await http(broker.port, preflight)
        assert status == 204 and "patch" in headers["access-control-allow-methods"]
        assert "authorization" in headers["access-control-allow-headers"]
        health = json.loads(
            (await http(broker.port, request("GET", "/healthz", headers=VIEWER)))[2]
        )
        assert health["http_errors"] == {}


@pytest.mark.timeout(60)
async def test_websocket_handshakes_need_a_valid_token() -> None:
    async with running_broker(config(TWO + TOKENS)) as broker:
        port = broker.port
        for path, headers in (
            ("/ws", ""),
            ("/ws?token=wrong-secret", ""),
            ("/ws", "Authorization: Bearer nope-nope\r\n"),
            ("/cameras/a", ""),
            ("/", ""),
            ("/cameras/a?token=nope-nope", ""),
        ):
            head = await handshake(port, path, headers)
            assert head.startswith(b"HTTP/1.1 401"), (path, head)
            assert b"www-authenticate: bearer" in head.lower()
        for path, headers in (
            ("/ws?token=viewer-secret", ""),
            ("/ws", VIEWER),
            ("/cameras/a", VIEWER),
            ("/cameras/a?token=only-a-secret", ""),
            ("/?token=only-a-secret", ""),
        ):
            head = await handshake(port, path, headers)
            assert head.startswith(b"HTTP/1.1 101"), (path, head)
        # A token limited to camera a: b is forbidden, whether it exists or not.
        for path in ("/cameras/b", "/cameras/nope"):
            head = await handshake(port, path, ONLY_A)
            assert head.startswith(b"HTTP/1.1 403"), (path, head)


@pytest.mark.timeout(60)
async def test_roles_and_camera_limits() -> None:
    cameras = TWO + TOKENS + "[presets.night]\nbrightness = 30\n"
    async with running_broker(config(cameras)) as broker:
        port = broker.port
        settings = b'{"brightness": 60}'
        # A viewer watches but does not command.
        for method, path, body in (
            ("PATCH", "/api/cameras/a/settings", settings),
            ("GET", "/api/cameras/a/settings", b""),
            ("POST", "/api/cameras/a/presets/night", b""),
            ("POST", "/api/sessions", b""),
            ("POST", "/cameras/a/frames", sample_jpeg(64, 48)),
        ):
            status, _, answer = await http(port, request(method, path, body, VIEWER))
            assert status == 403 and json.loads(answer)["error"] == "forbidden", (method, path)
        async with mux(port, VIEWER) as ws:
            reply = await ws.request(
                {"type": "command", "camera": "a", "command": "get_status", "request_id": "v"}
            )
            assert reply["type"] == "error" and reply["code"] == "forbidden"
        # An operator's command goes through (no worker here: 503 not_connected).
        status, _, answer = await http(
            port,
            request(
                "PATCH", "/api/cameras/a/settings", settings, OPERATOR + "X-Request-Id: abc\r\n"
            ),
        )
        reply = json.loads(answer)
        assert status == 503 and reply["error"] == "not_connected" and reply["request_id"] == "abc"
        assert reply["success"] is False and reply["camera"] == "a"
        for body in (b"{oops", b"[1]", b"[" * 10_000, b'{"brightness": NaN}', b"\xff\xfe{"):
            status, _, answer = await http(
                port, request("PATCH", "/api/cameras/a/settings", body, OPERATOR)
            )
            assert status == 400 and json.loads(answer)["error"] == "invalid_json", body[:20]
        status, _, answer = await http(
            port, request("POST", "/api/cameras/a/presets/nope", b"", OPERATOR)
        )
        assert status == 404 and json.loads(answer)["error"] == "unknown_preset"
        status, headers, _ = await http(
            port, request("DELETE", "/api/cameras/a/settings", b"", OPERATOR)
        )
        assert status == 405 and headers["allow"] == "get, patch"
        # A token limited to camera a sees only a.
        status, _, answer = await http(port, request("GET", "/api/cameras", headers=ONLY_A))
        assert [c["id"] for c in json.loads(answer)] == ["a"]
        status, _, answer = await http(port, request("GET", "/api/stats", headers=ONLY_A))
        assert [c["id"] for c in json.loads(answer)["cameras"]] == ["a"]
        for path in ("/cameras/b/snapshot.jpg", "/cameras/b/mjpeg", "/metrics"):
            status, _, _ = await http(port, request("GET", path, headers=ONLY_A))
            assert status == 403, path
        status, _, _ = await http(port, request("GET", "/cameras/a/snapshot.jpg", headers=ONLY_A))
        assert status == 200
        async with mux(port, ONLY_A) as ws:
            listed = await ws.request({"type": "list_cameras", "request_id": 1})
            assert [c["id"] for c in listed["cameras"]] == ["a"]
            stats = await ws.request({"type": "get_stats", "request_id": 2})
            assert [c["id"] for c in stats["cameras"]] == ["a"]
            for camera in ("b", "nope"):
                reply = await ws.request({"type": "subscribe", "camera": camera, "request_id": 3})
                assert reply["code"] == "forbidden", camera
            reply = await ws.request({"type": "subscribe", "camera": "a", "request_id": 4})
            assert reply["type"] == "subscribed"


# -- rate limits --------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_commands_are_rate_limited_per_connection_and_never_queued() -> None:
    async with running_broker(config(TWO)) as broker:
        async with mux(broker.port) as ws, mux(broker.port) as other:
            for i in range(11):
                await ws.send(
                    {"type": "command", "camera": "a", "command": "get_status", "request_id": i}
                )
            replies = [await ws.reply(i) for i in range(11)]
            limited = [r for r in replies if r["type"] == "error"]
            assert len(limited) >= 1 and all(r["code"] == "rate_limited" for r in limited)
            results = [r for r in replies if r["type"] == "command_result"]
            assert all(r["error"] == "not_connected" for r in results)
            # Another connection has its own budget.
            reply = await other.request(
                {"type": "command", "camera": "a", "command": "get_status", "request_id": "o"}
            )
            assert reply["type"] == "command_result"
            await trio.sleep(1.2)  # the bucket refills
            reply = await ws.request(
                {"type": "command", "camera": "a", "command": "get_status", "request_id": "later"}
            )
            assert reply["type"] == "command_result"


@pytest.mark.timeout(60)
async def test_http_commands_are_rate_limited_per_token() -> None:
    cfg = config(
        TWO + TOKENS + '[[tokens]]\ntoken = "second-operator"\nrole = "operator"\n',
        control="command_rate = 5.0",
    )
    async with running_broker(cfg) as broker:
        statuses = []
        for _ in range(8):
            statuses.append(
                (
                    await http(
                        broker.port, request("GET", "/api/cameras/a/settings", headers=OPERATOR)
                    )
                )[0]
            )
        assert statuses.count(503) >= 5 and 429 in statuses, statuses
        status, headers, answer = await http(
            broker.port, request("GET", "/api/cameras/a/settings", headers=OPERATOR)
        )
        if status == 429:
            assert json.loads(answer)["error"] == "rate_limited" and headers["retry-after"]
        other = request(
            "GET", "/api/cameras/a/settings", headers="Authorization: Bearer second-operator\r\n"
        )
        assert (await http(broker.port, other))[0] == 503  # its own bucket


@pytest.mark.timeout(60)
async def test_without_control_commands_are_still_rate_limited_first() -> None:
    cfg = config(TWO)
    hub = Hub([CameraInfo("a", "a", 320, 240), CameraInfo("b", "b", 320, 240)], offline_after=3)
    server = Server(cfg, hub, lambda: {"status": "ok"})
    listeners = await server.listen()
    async with trio.open_nursery() as n:
        n.start_soon(server.serve, listeners)
        async with mux(server.port) as ws:
            for i in range(11):
                await ws.send(
                    {"type": "command", "camera": "a", "command": "get_status", "request_id": i}
                )
            codes = [(await ws.reply(i))["code"] for i in range(11)]
            assert codes.count("no_control") == 10 and codes[-1] == "rate_limited", codes
            # The connection still works, and so does the rest of the protocol.
            reply = await ws.request({"type": "list_cameras", "request_id": "l"})
            assert [c["id"] for c in reply["cameras"]] == ["a", "b"]
            assert "settings" not in reply["cameras"][0]
        status, _, answer = await http(server.port, get("/api/cameras/a/settings"))
        assert status == 503 and json.loads(answer)["error"] == "no_control"
        n.cancel_scope.cancel()


# -- with real camera workers -------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_commands_over_ws_and_http_reach_real_workers(tmp_path: Path) -> None:
    cameras = (
        "[presets.night]\nbrightness = 30\ncontrast = 40\n"
        + synthetic_camera("cam", 320, 240, 10)
        + synthetic_camera("other", 320, 240, 10)
    )
    with BrokerProcess(write_config(tmp_path, cameras)) as broker:
        broker.wait_online("cam", "other")
        port = broker.port
        async with mux(port) as ws:
            await ws.request({"type": "subscribe", "camera": "cam", "request_id": 1})
            await ws.request({"type": "subscribe", "camera": "other", "request_id": 2})
            header, _ = await ws.frame(15)
            result = await ws.request(
                {
                    "type": "command",
                    "camera": "cam",
                    "command": "update_settings",
                    "settings": {"width": 160, "height": 120, "brightness": 70},
                    "request_id": 3,
                },
                within=15,
            )
            assert result["type"] == "command_result" and result["success"], result
            assert result["request_id"] == 3 and result["camera"] == "cam"
            assert result["settings"]["width"] == 160 and result["settings"]["brightness"] == 70
            changed = await ws.event("settings_changed")
            assert changed["camera"] == "cam" and "width" in changed["data"]["changed"]
            # Frames at the new size follow on the same connection; the other camera is
            # untouched.
            with trio.fail_after(10):
                while True:
                    header, image = await ws.frame()
                    if header["camera"] == "cam" and header["width"] == 160:
                        break
            decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
            assert decoded is not None and (decoded.shape[1], decoded.shape[0]) == (160, 120)
            others = [h for h, _ in ws.frames if h["camera"] == "other"]
            with trio.fail_after(10):
                while not others:  # the next frame may be cam's: wait for one of other's
                    header, _ = await ws.frame()
                    others += [header] if header["camera"] == "other" else []
            assert all(h["width"] == 320 for h in others), others
            bad = await ws.request(
                {
                    "type": "command",
                    "camera": "cam",
                    "command": "update_settings",
                    "settings": {"brightness": 500, "contrast": 60},
                    "request_id": "bad",
                }
            )
            assert bad["success"] is False and bad["error"] == "invalid_settings"
            assert "brightness" in bad["errors"]
            current = await ws.request(
                {"type": "command", "camera": "cam", "command": "get_status", "request_id": "s"}
            )
            assert current["success"] and current["settings"]["contrast"] == 50  # nothing applied
            preset = await ws.request(
                {
                    "type": "command",
                    "camera": "cam",
                    "command": "apply_preset",
                    "preset": "night",
                    "request_id": "p",
                }
            )
            assert preset["success"] and preset["settings"]["brightness"] == 30
        # The same through HTTP.
        path = "/api/cameras/cam/settings"
        status, _, body = await http(port, get(path))
        assert status == 200 and json.loads(body)["settings"]["width"] == 160
        status, _, body = await http(port, request("PATCH", path, b'{"fps": 0}'))
        assert status == 400 and "fps" in json.loads(body)["errors"]
        status, _, body = await http(port, request("PATCH", path, b'{"brightness": 55}'))
        assert status == 200 and json.loads(body)["settings"]["brightness"] == 55
        status, _, body = await http(port, request("POST", "/api/cameras/cam/presets/night"))
        assert status == 200 and json.loads(body)["settings"]["contrast"] == 40
        status, _, body = await http(port, request("POST", "/api/cameras/cam/presets/day"))
        assert status == 404 and json.loads(body)["error"] == "unknown_preset"
        status, _, body = await http(port, get("/api/cameras/nope/settings"))
        assert status == 404 and json.loads(body)["error"] == "unknown_camera"
        listed = {c["id"]: c for c in json.loads((await http(port, get("/api/cameras")))[2])}
        assert listed["cam"]["settings"]["brightness"] == 30 and listed["cam"]["streaming"]
        assert listed["cam"]["connected"] is True


class TokenBrokerProcess(BrokerProcess):
    """A broker process whose /healthz, like everything, needs ``token``."""

    def __init__(self, config: Path, token: str) -> None:
        super().__init__(config)
        self.token = token

    def start(self, timeout: float = 20) -> TokenBrokerProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "broker",
                    "run",
                    str(self.config),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz?token={self.token}", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.logs())

    def cameras(self) -> dict[str, dict]:
        with urllib.request.urlopen(f"{self.url}/api/cameras?token={self.token}") as answer:
            return {c["id"]: c for c in json.load(answer)}


@pytest.mark.timeout(120)
def test_viewer_page_passes_its_token_on(tmp_path: Path, page: Page) -> None:
    cameras = synthetic_camera("one", 320, 240, 10) + synthetic_camera("two", 320, 240, 10)
    path = write_config(
        tmp_path,
        cameras + TOKENS.replace("only-a-secret", "only-one-secret").replace('["a"]', '["one"]'),
    )
    with TokenBrokerProcess(path, "viewer-secret") as broker:
        broker.wait_online("one", "two")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(broker.url + "/", timeout=5)
        assert refused.value.code == 401
        refused.value.close()
        page.goto(broker.url + "/?token=viewer-secret")
        live = (
            "(n) => { const t = [...document.querySelectorAll('.tile')]; return t.length"
            " === n && t.every((e) => e.dataset.state === 'live'); }"
        )
        page.wait_for_function(live, arg=2)
        # A token limited to one camera shows just that one.
        page.goto(broker.url + "/?token=only-one-secret")
        page.wait_for_function(live, arg=1)
        assert page.evaluate("[...document.querySelectorAll('.tile')][0].dataset.camera") == "one"
