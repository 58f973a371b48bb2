"""HTTP producers and frames in order: uploads, ad-hoc sessions, next.jpg with its
retention window, CORS and path hygiene, with real sockets."""

from __future__ import annotations

import json
import time

import trio
from helpers import config, get, http, publisher, read_stamp, running_broker, sample_jpeg
from trio_websocket import open_websocket_url

from broker.protocol import stamp


def post(path: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def form(data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "XyZ123"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.jpg"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


async def frames_received(port: int, camera: str) -> int:
    cameras = json.loads((await http(port, get("/api/cameras")))[2])
    return next(c["frames_received"] for c in cameras if c["id"] == camera)


async def test_uploaded_jpeg_appears_on_the_camera_websocket() -> None:
    jpeg = stamp.stamp(sample_jpeg(320, 240), 77, time.time())
    async with running_broker(config()) as broker:
        async with open_websocket_url(f"ws://127.0.0.1:{broker.port}/cameras/a") as ws:
            status, _, body = await http(broker.port, post("/cameras/a/frames", jpeg, "image/jpeg"))
            assert status == 201, body
            assert json.loads(body) == {
                "camera": "a",
                "seq": 0,
                "width": 320,
                "height": 240,
                "format": "jpeg",
            }
            with trio.fail_after(3):
                assert await ws.get_message() == jpeg
            data, content_type = form(jpeg, "image/jpeg")
            status, _, body = await http(broker.port, post("/cameras/a/frames", data, content_type))
            assert status == 201 and json.loads(body)["seq"] == 1
            with trio.fail_after(3):
                assert await ws.get_message() == jpeg


async def test_oversize_and_non_image_uploads_are_refused_and_change_nothing() -> None:
    png = sample_jpeg(64, 48)
    async with running_broker(config(ingest="max_frame_bytes = 20000")) as broker:
        port = broker.port
        cases = [
            (post("/cameras/a/frames", sample_jpeg(), "image/jpeg"), 413),
            (post("/cameras/a/frames", b"GIF89a....", "image/jpeg"), 415),
            (post("/cameras/a/frames", png, "image/png"), 415),  # declared png, is jpeg
            (post("/cameras/a/frames", png, "text/plain"), 415),
            (post("/cameras/a/frames", b"\xff\xd8\xff" + bytes(100), "image/jpeg"), 415),
            (post("/cameras/a/frames", *form(b"", "image/jpeg")), 415),
            (post("/cameras/zz/frames", png, "image/jpeg"), 404),
            (get("/cameras/a/frames"), 405),
        ]
        for request, expected in cases:
            status, headers, body = await http(port, request)
            assert status == expected, (request[:60], body)
            assert headers["content-type"] == "application/json" and json.loads(body)["message"]
        assert await frames_received(port, "a") == 0


async def test_next_jpg_returns_frames_in_order_and_none_older_than_the_ttl() -> None:
    cfg = config(retention="[retention]\nframes = 10\nmax_age = 1.0")
    async with running_broker(cfg) as broker, publisher(broker) as pub:
        for _ in range(5):
            pub.send("a", sample_jpeg(320, 240), 320, 240)
        await trio.sleep(0.3)
        seqs, after = [], -1
        for _ in range(5):
            status, headers, body = await http(
                broker.port, get(f"/cameras/a/next.jpg?after={after}&timeout=1")
            )
            after = int(headers["x-frame-seq"])
            assert read_stamp(body)[0] == after
            seqs.append(after)
        assert seqs == [0, 1, 2, 3, 4]
        async with trio.open_nursery() as n:  # waits for the next frame

            async def later() -> None:
                await trio.sleep(0.5)
                pub.send("a", sample_jpeg(320, 240), 320, 240)

            n.start_soon(later)
            started = time.monotonic()
            status, headers, body = await http(
                broker.port, get("/cameras/a/next.jpg?after=4&timeout=5")
            )
            assert headers["x-frame-seq"] == "5" and 0.3 < time.monotonic() - started < 3
        await trio.sleep(1.3)  # everything is now older than max_age
        started = time.monotonic()
        status, headers, body = await http(
            broker.port, get("/cameras/a/next.jpg?after=-1&timeout=0.5")
        )
        assert status == 200 and "x-frame-seq" not in headers and stamp.read(body) is None
        assert 0.4 < time.monotonic() - started < 2
        assert (await http(broker.port, get("/cameras/a/next.jpg?after=x")))[0] == 400


async def test_sessions_create_ad_hoc_cameras_that_expire() -> None:
    async with running_broker(config()) as broker:
        assert (await http(broker.port, post("/api/sessions", b"", "application/json")))[0] == 403
    cfg = config(ingest="http_sessions = true\nsession_ttl = 1.0")
    async with running_broker(cfg) as broker:
        status, _, body = await http(broker.port, post("/api/sessions", b"", "application/json"))
        assert status == 201
        session = json.loads(body)
        upload = post(session["upload"], sample_jpeg(64, 48), "image/jpeg")
        assert (await http(broker.port, upload))[0] == 201
        assert await frames_received(broker.port, session["id"]) == 1
        status, headers, _ = await http(broker.port, get(session["snapshot"]))
        assert status == 200 and headers["x-frame-seq"] == "0"
        await trio.sleep(3)  # no frames for longer than the TTL
        assert (await http(broker.port, get(session["snapshot"])))[0] == 404


async def test_sessions_are_bounded_by_max_cameras() -> None:
    cfg = config(ingest="http_sessions = true\nmax_cameras = 3")  # "a" plus two sessions
    async with running_broker(cfg) as broker:
        for _ in range(2):
            status, _, _ = await http(broker.port, post("/api/sessions", b"", "application/json"))
            assert status == 201
        status, headers, body = await http(
            broker.port, post("/api/sessions", b"", "application/json")
        )
        assert status == 503 and json.loads(body)["error"] == "too_many_cameras"
        assert headers["retry-after"] == "60"


async def test_cors_only_where_the_config_allows() -> None:
    origin = "Origin: http://grafana.test\r\n"
    request = f"GET /api/cameras HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{origin}\r\n".encode()
    async with running_broker(config()) as broker:
        _, headers, _ = await http(broker.port, request)
        assert "access-control-allow-origin" not in headers
    async with running_broker(config(server='cors_origins = ["http://grafana.test"]')) as broker:
        _, headers, _ = await http(broker.port, request)
        assert headers["access-control-allow-origin"] == "http://grafana.test"
        other = request.replace(b"grafana.test", b"evil.test")
        _, headers, _ = await http(broker.port, other)
        assert "access-control-allow-origin" not in headers
        preflight = request.replace(b"GET /api/cameras", b"OPTIONS /cameras/a/frames")
        status, headers, _ = await http(broker.port, preflight)
        assert (
            status == 204 and "post" in headers["access-control-allow-methods"]
        )  # header lines are lower-cased by http()


async def test_paths_cannot_leave_the_static_folder() -> None:
    async with running_broker(config()) as broker:
        for path in (
            "/../pyproject.toml",
            "/%2e%2e/pyproject.toml",
            "/static/../app.py",
            "/viewer.js/../../app.py",
            "/app.py",
            "//etc/passwd",
        ):
            assert (await http(broker.port, get(path)))[0] == 404, path
        status, _, body = await http(broker.port, get("/viewer.js"))
        assert status == 200 and b"WebSocket" in body


async def test_a_body_that_never_arrives_is_cut_off_and_others_are_served() -> None:
    async with running_broker(config(server="header_timeout = 1.0")) as broker:
        stalled = await trio.open_tcp_stream("127.0.0.1", broker.port)
        async with stalled:
            await stalled.send_all(
                post("/cameras/a/frames", b"", "image/jpeg").replace(
                    b"Content-Length: 0", b"Content-Length: 5000"
                )
                + b"\xff\xd8"
            )
            assert (await http(broker.port, get("/healthz")))[0] == 200
            with trio.fail_after(4):
                assert await stalled.receive_some(100) == b""
