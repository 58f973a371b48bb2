"""TIFF and LZ4 end to end (issue 12): real workers → a real broker → WebSocket, decoded
here and compared with what the worker encoded; the JPEG browser outputs derive once per
frame however many watch; "No Data" in the camera's own format; garbage refused with a
reason, counted, and nobody else disturbed; cameras by index."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import helpers
import lz4.frame
import numpy as np
import pytest
import trio
import zmq
from procs import BrokerProcess, synthetic_camera, wait_until, write_config
from survival import Viewer

from benchmarks.churn import parse_server_frame
from benchmarks.procs import free_port, get_json
from broker.config import parse as parse_config
from broker.control.supervisor import worker_command
from broker.core import frame as frame_module
from broker.protocol import layout, mux, wire
from cameras.encoding import encode
from cameras.sources import make_source
from cameras.sources.v4l2 import V4L2Source

SIZE = (640, 480)


def still(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A BGR image: smooth gradients (JPEG stays close) with a little grain (LZ4 has work),
    and a pure red top-left corner (the "No Data" image is dark grey there)."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image: np.ndarray = np.stack(
        [(x + seed * 40) % 256 + 0 * y, (y + seed * 70) % 256 + 0 * x, (x + y) / 2], axis=2
    ).astype(np.uint8)
    image = cv2.add(image, rng.integers(0, 6, image.shape, np.uint8))
    image[:16, :16] = (0, 0, 255)
    return image


def folder_of_stills(tmp_path: Path, count: int = 2) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path / "stills"
    folder.mkdir()
    images = [still(i) for i in range(count)]
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder, images


class Client:
    """A blocking WebSocket client: the handshake done, its leftover bytes kept."""

    def __init__(self, sock: socket.socket, buffer: bytearray) -> None:
        self.sock, self.buffer = sock, buffer

    def send_text(self, text: str) -> None:
        """One masked text frame (clients must mask)."""
        data = text.encode()
        assert len(data) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes((0x81, 0x80 | len(data))) + mask + masked)


@contextlib.contextmanager
def websocket(port: int, path: str) -> Iterator[Client]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(1 << 20)
            assert data, "closed during the handshake"
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        yield Client(
            sock, bytearray(rest) if b" 101 " in head.split(b"\r\n")[0] else bytearray(head)
        )
    finally:
        sock.close()


def messages(client: Client, count: int, within: float = 15) -> list[bytes]:
    """The next ``count`` binary messages."""
    out: list[bytes] = []
    deadline = time.monotonic() + within
    while len(out) < count:
        assert time.monotonic() < deadline, f"{len(out)} of {count} messages"
        frame = parse_server_frame(client.buffer)
        if frame is None:
            data = client.sock.recv(1 << 20)
            assert data, "closed"
            client.buffer += data
        elif frame[0] == 0x2:
            out.append(frame[1])
    return out


def health(broker: BrokerProcess) -> dict:
    result = get_json(broker.url + "/healthz")
    assert isinstance(result, dict)
    return result


# -- round trips through a real worker ------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fmt", "depth"), [("lz4", 8), ("tiff", 8), ("tiff", 16)])
def test_round_trip_worker_broker_websocket(tmp_path: Path, fmt: str, depth: int) -> None:
    folder, images = folder_of_stills(tmp_path)
    camera = (
        f'[[cameras]]\nid = "cam"\nsource = "{folder}"\nwidth = {SIZE[0]}\nheight = {SIZE[1]}\n'
        f'fps = 5\nformat = "{fmt}"\ntiff_depth = {depth}\n'
    )
    with BrokerProcess(write_config(tmp_path, camera)) as broker:
        broker.wait_online("cam")
        with websocket(broker.port, "/cameras/cam") as sock:
            received = messages(sock, 4)
        for data in received:
            assert wire.sniff_format(data) == fmt
            if fmt == "lz4":
                # Lossless and deterministic: the very bytes the worker's encoder makes.
                expected = [
                    lz4.frame.compress(i.tobytes(), compression_level=0, store_size=True)
                    for i in images
                ]
                assert data in expected
                assert lz4.frame.decompress(data) in [i.tobytes() for i in images]
                continue
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert decoded is not None
            if depth == 8:
                assert decoded.dtype == np.uint8
                assert any(np.array_equal(decoded, image) for image in images)
            else:
                assert decoded.dtype == np.uint16 and decoded.shape == SIZE[::-1]
                greys = [
                    cv2.cvtColor(i, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257 for i in images
                ]
                assert any(np.array_equal(decoded, grey) for grey in greys)
        assert broker.cameras()["cam"]["format"] == fmt
        # Browser outputs get a JPEG derived from the frame, close to the original.
        with urllib.request.urlopen(broker.url + "/cameras/cam/snapshot.jpg", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            jpeg = r.read()
        shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert shown is not None and shown.shape == (*SIZE[::-1], 3)
        originals = (
            images
            if depth == 8
            else [
                cv2.cvtColor(cv2.cvtColor(i, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
                for i in images
            ]
        )
        assert min(np.mean(cv2.absdiff(shown, o)) for o in originals) < 6


@pytest.mark.timeout(60)
def test_browser_outputs_share_one_derived_jpeg_per_frame(tmp_path: Path) -> None:
    """Three browser viewers (?format=jpeg) and an MJPEG reader of an LZ4 camera: the
    broker derives at most one JPEG per frame; the plain viewer gets the LZ4 bytes."""
    folder, _ = folder_of_stills(tmp_path)
    camera = (
        f'[[cameras]]\nid = "cam"\nsource = "{folder}"\nwidth = {SIZE[0]}\n'
        f'height = {SIZE[1]}\nfps = 10\nformat = "lz4"\n'
    )
    with BrokerProcess(write_config(tmp_path, camera)) as broker:
        broker.wait_online("cam")
        assert health(broker)["derived_jpegs"] == 0  # nobody watches a browser output
        with contextlib.ExitStack() as stack:
            browsers = [
                stack.enter_context(Viewer(broker.port, "cam", "?format=jpeg")) for _ in range(3)
            ]
            plain = stack.enter_context(Viewer(broker.port, "cam"))
            mjpeg = stack.enter_context(
                urllib.request.urlopen(broker.url + "/cameras/cam/mjpeg", timeout=10)
            )
            head = mjpeg.read(4096)
            assert b"Content-Type: image/jpeg" in head
            received_before = broker.cameras()["cam"]["frames_received"]
            derived_before = health(broker)["derived_jpegs"]
            start = time.monotonic()
            time.sleep(3)
            for viewer in (*browsers, plain):
                viewer.assert_kept(fps=10, since=start, fraction=0.8)
            received = broker.cameras()["cam"]["frames_received"] - received_before
            derived = health(broker)["derived_jpegs"] - derived_before
            assert 0.8 * received <= derived <= received + 1, (derived, received)
        with websocket(broker.port, "/cameras/cam?format=jpeg") as sock:
            assert wire.sniff_format(messages(sock, 1)[0]) == "jpeg"
        with websocket(broker.port, "/cameras/cam?format=png") as refused:
            assert refused.buffer.startswith(b"HTTP/1.1 400 ")


# -- "No Data" in the camera's own format ---------------------------------------------


class Producer:
    """Frames published straight to the broker's ingest endpoint, as a worker would."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.seq = 0

    def send(self, camera: str, fmt: str, payload: bytes, size: tuple[int, int] = SIZE) -> None:
        header = wire.FrameHeader(camera, self.seq, time.time(), *size, fmt)
        self.socket.send_multipart(wire.encode(header, payload))
        self.seq += 1

    def send_raw(self, parts: list[bytes]) -> None:
        self.socket.send_multipart(parts)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@contextlib.contextmanager
def external_broker(tmp_path: Path, cameras: str) -> Iterator[tuple[BrokerProcess, Producer]]:
    port = free_port()
    path = tmp_path / "broker.toml"
    path.write_text(
        f'[ingest]\nendpoints = ["tcp://127.0.0.1:{port}"]\noffline_after = 1.0\n'
        f"max_frame_bytes = 200000\n[control]\nendpoints = []\n{cameras}"
    )
    with BrokerProcess(path) as broker:
        producer = Producer(f"tcp://127.0.0.1:{port}")
        try:
            time.sleep(0.3)  # the slow joiner: PUB drops what it sends before connecting
            yield broker, producer
        finally:
            producer.close()


def external(camera: str, fmt: str, size: tuple[int, int] = SIZE) -> str:
    return (
        f'[[cameras]]\nid = "{camera}"\nformat = "{fmt}"\nwidth = {size[0]}\nheight = {size[1]}\n'
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fmt", "size", "no_data_size"),
    [
        ("lz4", SIZE, SIZE),
        ("lz4", (1000, 700), (640, 480)),  # not a size the panel knows: the largest within
        ("tiff", SIZE, SIZE),
        ("bmp", SIZE, SIZE),
    ],
)
def test_no_data_comes_in_the_camera_format(
    tmp_path: Path, fmt: str, size: tuple[int, int], no_data_size: tuple[int, int]
) -> None:
    with external_broker(tmp_path, external("cam", fmt, size)) as (broker, producer):
        frame = encode(still(1, size), fmt, 80)
        with websocket(broker.port, "/cameras/cam") as sock, websocket(broker.port, "/ws") as mx:
            mx.send_text(json.dumps({"type": "subscribe", "camera": "cam"}))
            for _ in range(3):
                producer.send("cam", fmt, frame, size)
                time.sleep(0.1)
            got = messages(sock, 4, within=10)  # the frames, then "No Data" a second later
            assert got[0] == frame
            placeholder = got[-1]
            assert wire.sniff_format(placeholder) == fmt
            found = layout.check(fmt, placeholder, *no_data_size)
            assert found is not None
            if fmt == "lz4":
                pixels = np.frombuffer(lz4.frame.decompress(placeholder), np.uint8)
                corner = pixels.reshape(no_data_size[1], no_data_size[0], 3)[0, 0]
            else:
                decoded = cv2.imdecode(np.frombuffer(placeholder, np.uint8), cv2.IMREAD_COLOR)
                assert decoded is not None
                corner = decoded[0, 0]
            assert tuple(corner) == (42, 38, 38)  # the dark grey of "No Data", not red
            framed = [mux.decode(m) for m in messages(mx, 4, within=10)]
            assert framed[-1].placeholder and framed[-1].format == fmt
            assert (framed[-1].width, framed[-1].height) == no_data_size
        with urllib.request.urlopen(broker.url + "/cameras/cam/snapshot.jpg", timeout=10) as r:
            assert (
                r.headers["Content-Type"] == "image/jpeg" and wire.sniff_format(r.read()) == "jpeg"
            )


# -- garbage ----------------------------------------------------------------------------


def tiff_declaring(width: int, height: int) -> bytes:
    """A tiny TIFF whose tags declare ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(encode(still(0, (8, 8)), "tiff", 80))
    order = "<"
    (ifd,) = np.frombuffer(bytes(data[4:8]), "<u4")
    (count,) = np.frombuffer(bytes(data[ifd : ifd + 2]), "<u2")
    for i in range(int(count)):
        at = int(ifd) + 2 + 12 * i
        tag = int.from_bytes(data[at : at + 2], "little")
        if tag in (256, 257):
            data[at + 2 : at + 4] = (4).to_bytes(2, "little")  # LONG
            value = width if tag == 256 else height
            data[at + 8 : at + 12] = value.to_bytes(4, "little")
    assert order == "<"
    return bytes(data)


def post(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, body, {"Content-Type": content_type, **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.timeout(90)
def test_garbage_is_refused_with_a_reason_counted_and_disturbs_nobody(tmp_path: Path) -> None:
    cameras = (
        external("lz", "lz4")
        + external("tf", "tiff")
        + external("bm", "bmp")
        + synthetic_camera("other", 320, 240, 10)
    )
    with external_broker(tmp_path, cameras) as (broker, producer):
        broker.wait_online("other")
        image = still(2)
        honest_lz4 = encode(image, "lz4", 80)
        tiff = encode(image, "tiff", 80)
        bmp = encode(image, "bmp", 80)
        # An LZ4 frame that lies: a 640x480 content size over 100 bytes of content.
        small = lz4.frame.compress(b"x" * 100, store_size=True)
        liar = small[:6] + (SIZE[0] * SIZE[1] * 3).to_bytes(8, "little") + small[14:]
        short_bmp = bmp[: len(bmp) // 2]
        bomb = tiff_declaring(100_000, 100_000)
        with Viewer(broker.port, "other") as viewer:
            start = time.monotonic()
            for _ in range(20):  # over ZeroMQ
                producer.send("lz", "lz4", liar)
                producer.send("tf", "tiff", tiff[: len(tiff) // 2])  # truncated
                producer.send("tf", "tiff", bomb)
                producer.send("bm", "bmp", short_bmp)
                time.sleep(0.05)
            wait_until(
                lambda: health(broker)["ingest"]["errors"].get("layout", 0) >= 80,
                10,
                "the garbage counted",
            )
            url = broker.url + "/cameras/{}/frames"
            cases = [  # over HTTP: (camera, body, content type, headers, status, words)
                ("lz", liar, "application/x-lz4", {"X-Frame-Size": "640x480"}, 415, "content"),
                ("lz", honest_lz4, "application/x-lz4", {}, 400, "X-Frame-Size"),
                (
                    "lz",
                    honest_lz4,
                    "application/x-lz4",
                    {"X-Frame-Size": "320x240"},
                    415,
                    "content size",
                ),
                ("tf", tiff[: len(tiff) // 2], "image/tiff", {}, 415, "truncated"),
                ("tf", bomb, "image/tiff", {}, 413, "100000x100000"),
                ("bm", short_bmp, "image/bmp", {}, 415, "bytes"),
            ]
            for camera, body, content_type, headers, status, words in cases:
                got, answer = post(url.format(camera), body, content_type, **headers)
                assert (got, words in answer["message"]) == (status, True), answer
            viewer.assert_kept(fps=10, since=start)
        # Honest frames still go through, by either way in.
        assert (
            post(url.format("lz"), honest_lz4, "application/x-lz4", **{"X-Frame-Size": "640x480"})[
                0
            ]
            == 201
        )
        assert post(url.format("tf") + "", tiff, "image/tiff")[0] == 201
        assert post(url.format("bm"), bmp, "image/bmp")[0] == 201
        producer.send("lz", "lz4", honest_lz4)
        wait_until(lambda: broker.cameras()["lz"]["frames_received"] >= 2, 5, "an honest frame")
        errors = health(broker)["http_errors"]
        assert errors.get("415", 0) >= 4 and errors.get("413", 0) >= 1 and errors.get("400", 0) >= 1
        assert "(layout): a lz4 frame: the LZ4 frame declares 921600 bytes" in broker.logs()


# -- cameras by index -------------------------------------------------------------------


def test_a_camera_by_index_in_the_config_and_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config('[[cameras]]\nid = "usb"\ndevice = 0\n')
    camera = config.cameras[0]
    assert camera.device == 0 and camera.supervised
    command = worker_command(camera, "ipc:///x", "info")
    assert command[command.index("--device") + 1] == "0"
    source = make_source(None, "0", None, 15.0, "jpeg")
    assert isinstance(source, V4L2Source)
    assert source.device_path == "/dev/video0"
    opened: list[tuple[object, ...]] = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args: opened.append(args))
    source.open_capture()
    assert opened == [(0, cv2.CAP_V4L2)]  # OpenCV opens the device by its index


@pytest.mark.timeout(60)
def test_api_cameras_shows_the_device(tmp_path: Path) -> None:
    cameras = (
        '[[cameras]]\nid = "usb"\ndevice = 0\n[[cameras]]\nid = "v4l"\ndevice = "/dev/video7"\n'
    )
    with BrokerProcess(write_config(tmp_path, cameras)) as broker:
        listed = broker.cameras()
        assert listed["usb"]["device"] == 0 and listed["v4l"]["device"] == "/dev/video7"


# -- no copy of a payload per client ----------------------------------------------------


async def drain(port: int, path: str, total: int) -> None:
    """A client that reads ``total`` bytes after its handshake and keeps none of them."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    while total > 0:
        data = await stream.receive_some(65536)
        assert data
        total -= len(data)
    await stream.aclose()


@pytest.mark.timeout(60)
async def test_no_copy_of_a_frame_per_client_between_ingest_and_the_socket() -> None:
    """Eight WebSocket clients of a 4 MB LZ4 camera: the broker's Python memory grows by
    less than one frame (tracemalloc): not a copy per client, not even one for the
    message, which is the header and the received payload itself; and each frame's
    message is built once (counted), whatever the number of clients."""
    width, height, frames, clients = 1280, 1080, 4, 8
    payload = lz4.frame.compress(os.urandom(width * height * 3), store_size=True)
    cfg = helpers.config(
        f'[[cameras]]\nid = "a"\nformat = "lz4"\nwidth = {width}\nheight = {height}\n'
    )
    builds = 0
    real_header = frame_module.websocket_binary_header

    def counting_header(length: int) -> bytes:
        nonlocal builds
        builds += 1
        return real_header(length)

    frame_module.websocket_binary_header = counting_header
    try:
        async with helpers.running_broker(cfg) as broker, helpers.publisher(broker) as pub:
            message = len(real_header(len(payload))) + len(payload)
            tracemalloc.start()
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(clients):
                        nursery.start_soon(drain, broker.port, "/cameras/a", frames * message)
                    await trio.sleep(0.5)  # every client subscribed
                    before, _ = tracemalloc.get_traced_memory()
                    tracemalloc.reset_peak()
                    for seq in range(frames):
                        header = wire.FrameHeader("a", seq, time.time(), width, height, "lz4")
                        pub.send_raw(wire.encode(header, payload))
                        await trio.sleep(0.3)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        frame_module.websocket_binary_header = real_header
    assert builds == frames, builds  # one message per frame, shared by the 8 clients
    grown = peak - before
    print(f"peak Python memory over the baseline: {grown / 1e6:.1f} MB for {clients} clients")
    # A copy per client would be 8 x 3.7 MB more; a joined message, one 3.7 MB.
    assert grown < len(payload) / 2, grown


def test_the_kernel_may_hold_a_sixteenth_of_a_raw_frame_per_viewer() -> None:
    """4K raw frames are not written 64 KiB at a time: a viewer of a 4K LZ4 camera may
    leave 1/16 of a frame unsent in the kernel; JPEG and small raw cameras keep 64 KiB."""
    from broker.core.camera import Camera, CameraInfo
    from broker.serve.delivery import unsent_bound

    assert unsent_bound(Camera(CameraInfo("a", "a", 3840, 2160, "lz4"))) == 3840 * 2160 * 3 // 16
    assert unsent_bound(Camera(CameraInfo("b", "b", 3840, 2160, "jpeg"))) is None
    assert unsent_bound(Camera(CameraInfo("c", "c", 160, 120, "bmp"))) is None
