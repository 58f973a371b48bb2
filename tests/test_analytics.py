"""Analytics end to end: a real `broker run` with [analytics] enabled supervises a real
camera-analyzer; frames uploaded over HTTP to a camera without a worker are analysed,
and the results come back as /ws events (through the client library), in
/api/cameras/{id}/detections, /api/stats, /metrics and /healthz.

The photographs ship inside scikit-image's wheel (skimage/data/): nothing downloaded."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import onnx
import pytest
import skimage
import trio
from controlpeer import WallClock, make_config, running_control, serving, wait_for
from helpers import get, http
from procs import BrokerProcess, synthetic_camera, wait_until, write_config
from survival import Viewer

from broker.client import connect
from broker.control import Control

if TYPE_CHECKING:
    from playwright.sync_api import Page

PHOTOS = Path(skimage.__file__).parent / "data"
CAMERAS = '[[cameras]]\nid = "up"\n[[cameras]]\nid = "face"\n[[cameras]]\nid = "cat"\n'
ANALYTICS = "[analytics]\nenabled = true\nfps = 10\nmotion_settle = 1.0\n"


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def scene(x: int | None) -> bytes:
    """A still 320x240 scene; with ``x``, a dark 60x60 square at x."""
    image = np.full((240, 320, 3), 180, np.uint8)
    cv2.rectangle(image, (10, 10), (100, 60), (90, 140, 200), -1)  # furniture
    if x is not None:
        cv2.rectangle(image, (x, 100), (x + 60, 160), (20, 20, 20), -1)
    return jpeg(image)


def photo(name: str) -> bytes:
    image = cv2.imread(str(PHOTOS / name))
    assert image is not None, name
    return jpeg(image)


def upload(camera: str, body: bytes) -> bytes:
    kind = "png" if body.startswith(b"\x89PNG") else "jpeg"
    return (
        f"POST /cameras/{camera}/frames HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: image/{kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def patch(camera: str, settings: dict[str, Any]) -> bytes:
    body = json.dumps(settings).encode()
    return (
        f"PATCH /api/cameras/{camera}/settings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def get_json(port: int, path: str) -> Any:
    status, _, body = await http(port, get(path))
    assert status == 200, body
    return json.loads(body)


async def set_ai(port: int, camera: str, **settings: Any) -> tuple[int, Any]:
    status, _, body = await http(port, patch(camera, settings))
    return status, json.loads(body)


async def wait_analyzer(port: int) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            health = await get_json(port, "/healthz")
            if health["analytics"]["connected"]:
                return health["analytics"]
            await trio.sleep(0.1)


class Events:
    """The analytics events a client-library connection receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        if message.get("event") in ("motion_started", "motion_stopped", "objects_detected"):
            self.seen.append(message)

    def of(self, kind: str, camera: str) -> list[dict[str, Any]]:
        return [m for m in self.seen if m["event"] == kind and m["camera"] == camera]


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    config = write_config(tmp_path, CAMERAS, extra=ANALYTICS)
    with BrokerProcess(config) as process:
        yield process


async def feed(port: int, camera: str, frames: list[bytes], fps: float = 10) -> None:
    for frame in frames:
        status, _, body = await http(port, upload(camera, frame))
        assert status in (200, 201), body
        await trio.sleep(1 / fps)


@pytest.mark.timeout(60)
async def test_motion_on_an_upload_only_camera_starts_and_stops(broker: BrokerProcess) -> None:
    port = broker.port
    await wait_analyzer(port)
    # Only ai_* keys: 200 for a camera without any worker or control channel.
    status, answer = await set_ai(port, "up", ai_enabled=True, ai_model="motion")
    assert status == 200, answer
    assert answer["settings"]["ai_enabled"] is True
    events = Events()
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        client.on("event", events)
        await feed(port, "up", [scene(None)] * 15)  # still: no motion
        assert events.of("motion_started", "up") == []
        moving_from = time.time()
        await feed(port, "up", [scene(20 + 12 * i) for i in range(15)])
        moving_until = time.time()
        with trio.fail_after(5):
            while not events.of("motion_started", "up"):
                await trio.sleep(0.05)
        await feed(port, "up", [scene(None)] * 25)  # still again, longer than the settle
        with trio.fail_after(5):
            while not events.of("motion_stopped", "up"):
                await trio.sleep(0.05)
    started, stopped = events.of("motion_started", "up")[0], events.of("motion_stopped", "up")[0]
    assert moving_from - 0.2 <= started["data"]["time"] <= moving_until
    assert started["data"]["area"] >= 0.01
    # motion_settle = 1.0 after the last moving frame analysed (about moving_until)
    assert moving_until + 0.5 <= stopped["data"]["time"] <= moving_until + 3.0
    assert len(events.of("motion_started", "up")) == 1
    detections = await get_json(port, f"/api/cameras/up/detections?since={moving_from - 5}")
    kinds = [r["type"] for r in detections["results"]]
    assert kinds == ["motion_started", "motion_stopped"], detections
    stats = await get_json(port, "/api/stats")
    up = next(c for c in stats["cameras"] if c["id"] == "up")
    assert up["analytics"]["motion_events"] == 1 and up["analytics"]["analysed"] > 20
    metrics = (await http(port, get("/metrics")))[2].decode()
    assert 'camera_broker_motion_active{camera="up"} 0.0' in metrics
    assert "camera_broker_frames_analysed_total" in metrics


@pytest.mark.timeout(60)
async def test_a_face_photo_yields_a_face_box_and_a_cat_none(broker: BrokerProcess) -> None:
    port = broker.port
    await wait_analyzer(port)
    # Seed 002's model name is an alias of face.
    for camera in ("face", "cat"):
        status, answer = await set_ai(
            port, camera, ai_enabled=True, ai_model="face_recognition", ai_confidence=0.5
        )
        assert status == 200 and answer["settings"]["ai_model"] == "face", answer
    events = Events()
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        client.on("event", events)
        face, cat = photo("astronaut.png"), photo("chelsea.png")
        with trio.fail_after(10):
            while not events.of("objects_detected", "face"):
                await feed(port, "face", [face], fps=20)
                await feed(port, "cat", [cat], fps=20)
        await feed(port, "cat", [cat] * 5)
    found = events.of("objects_detected", "face")[0]["data"]
    assert found["label"] == "face" and found["confidence"] >= 0.5
    x, y, w, h = found["box"]
    # The astronaut's face is about x 180..270, y 60..160 of the 512x512 photo.
    assert 150 <= x <= 200 and 40 <= y <= 100 and 70 <= w <= 130 and 70 <= h <= 130, found
    assert (found["width"], found["height"]) == (512, 512)
    assert events.of("objects_detected", "cat") == []
    # ai_enabled = false stops the events within a second.
    status, _ = await set_ai(port, "face", ai_enabled=False)
    assert status == 200
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        events = Events()
        client.on("event", events)
        await feed(port, "face", [face] * 20, fps=20)
    assert events.of("objects_detected", "face") == []
    # An invalid model changes nothing and names the key.
    status, answer = await set_ai(port, "cat", ai_enabled=False, ai_model="tensorflow")
    assert status == 400 and "ai_model" in answer["errors"], answer
    cameras = {c["id"]: c for c in await get_json(port, "/api/cameras")}
    settings = cameras["cat"]["settings"]
    assert settings["ai_enabled"] is True and settings["ai_model"] == "face"
    counts = await get_json(port, "/api/stats")
    face_stats = next(c for c in counts["cameras"] if c["id"] == "face")["analytics"]
    assert face_stats["detections"]["face"] >= 1
    metrics = (await http(port, get("/metrics")))[2].decode()
    assert 'camera_broker_detections_total{camera="face",label="face"}' in metrics


def test_sigkill_of_the_analyzer_restarts_it_and_frames_never_stop(tmp_path: Path) -> None:
    """A supervised test-pattern camera analysed for motion, watched by a real viewer;
    the analyzer is SIGKILLed: it is restarted and reported, the viewer keeps its fps."""
    cameras = synthetic_camera("cam", 320, 240, 10)
    config = write_config(tmp_path, cameras, extra=ANALYTICS)
    with BrokerProcess(config) as broker:
        broker.wait_online("cam")
        first = wait_analyzer_sync(broker.url)
        status, answer = patch_sync(broker.url, "cam", {"ai_enabled": True})
        assert status == 200, answer
        wait_until(
            lambda: fetch(broker.url + "/api/stats")["cameras"][0]["analytics"]["analysed"] > 5,
            10,
            "the analyzer analyses nothing",
        )
        with Viewer(broker.port, "cam") as viewer:
            start = time.monotonic()
            os.kill(first["pid"], signal.SIGKILL)
            wait_until(
                lambda: (
                    (h := fetch(broker.url + "/healthz")["analytics"])["connected"]
                    and h["pid"] != first["pid"]
                ),
                15,
                "the analyzer was not restarted",
            )
            time.sleep(1.0)
            viewer.assert_kept(fps=10, since=start)
        health = fetch(broker.url + "/healthz")["analytics"]
        assert health["restarts"] == 1 and health["cameras"] == ["cam"]
        analysed = fetch(broker.url + "/api/stats")["cameras"][0]["analytics"]["analysed"]
        time.sleep(1.0)  # the new analyzer analyses again
        assert fetch(broker.url + "/api/stats")["cameras"][0]["analytics"]["analysed"] > analysed
        assert f"analyzer pid {first['pid']} exited (signal SIGKILL)" in broker.logs()


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def patch_sync(url: str, camera: str, settings: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/api/cameras/{camera}/settings",
        data=json.dumps(settings).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_analyzer_sync(url: str) -> dict[str, Any]:
    wait_until(lambda: fetch(url + "/healthz")["analytics"]["connected"], 20, "no analyzer")
    return fetch(url + "/healthz")["analytics"]


@pytest.mark.timeout(60)
async def test_person_model_runs_hog_and_honours_the_confidence(broker: BrokerProcess) -> None:
    """No photograph bundled in an installed package shows a whole upright person
    (HOG's training case); the HOG path runs on what exists: the astronaut photo, where
    it finds one upright shape scoring about 0.35 (in the PNG: JPEG artefacts lose it).
    Above that confidence: nothing."""
    port = broker.port
    await wait_analyzer(port)
    status, answer = await set_ai(
        port, "up", ai_enabled=True, ai_model="object_detection", ai_confidence=0.9
    )
    assert status == 200 and answer["settings"]["ai_model"] == "person", answer
    astronaut = (PHOTOS / "astronaut.png").read_bytes()  # PNG: no JPEG artefacts
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        events = Events()
        client.on("event", events)
        await feed(port, "up", [astronaut] * 10)
        assert events.of("objects_detected", "up") == []
        assert (await set_ai(port, "up", ai_confidence=0.3))[0] == 200
        with trio.fail_after(10):
            while not events.of("objects_detected", "up"):
                await feed(port, "up", [astronaut], fps=20)
    found = events.of("objects_detected", "up")[0]["data"]
    assert found["label"] == "person" and found["model"] == "person"
    x, y, w, h = found["box"]
    assert 0.3 <= found["confidence"] < 0.9 and x + w <= 512 and y + h <= 512 and h > w


# -- settings through the control plane: presets, schedules, the state file ---------


@pytest.mark.timeout(30)
async def test_presets_and_schedules_switch_models_of_a_camera_without_a_worker(
    tmp_path: Path,
) -> None:
    extra = (
        '[presets.day]\nai_enabled = true\nai_model = "person"\n'
        '[presets.night]\nai_model = "motion"\nai_confidence = 0.7\n'
        '[presets.mixed]\nbrightness = 60\nai_model = "face"\n'
    )
    cameras = '[[cameras]]\nid = "cam"\nschedule = [{at = "19:30", preset = "night"}]\n'
    clock = WallClock(dt.datetime(2025, 6, 1, 19, 29, 58))
    heard: list[tuple[str, Mapping[str, Any]]] = []

    def prepare(control: Control) -> None:
        control.schedules.wall_clock = clock
        control.schedules.check_every = 0.05
        control.on_broker_settings = lambda camera, settings: heard.append((camera, settings))

    async with running_control(make_config(tmp_path, cameras, extra), prepare) as control:
        await trio.sleep(0.2)  # the scheduler reads the clock as it starts
        listener = control.events.listen()
        result = await control.apply_preset("cam", "day")
        assert result.success, result.message
        assert control.broker_settings("cam") == {
            "ai_enabled": True,
            "ai_model": "person",
            "ai_confidence": 0.5,
        }
        event = listener.get_nowait()
        assert event is not None and event.event == "settings_changed"
        assert event.data["changed"] == ["ai_enabled", "ai_model"]
        # A preset with a worker's key needs the worker: refused, nothing changes.
        result = await control.apply_preset("cam", "mixed")
        assert result.error == "not_connected"
        assert control.broker_settings("cam")["ai_model"] == "person"
        # An invalid model: nothing changes, the key is named.
        result = await control.command(
            "cam", "update_settings", {"ai_model": "yolo", "ai_enabled": False}
        )
        assert result.error == "invalid_settings" and result.errors is not None
        assert set(result.errors) == {"ai_model"}
        assert control.broker_settings("cam")["ai_enabled"] is True
        # The schedule switches to the night preset as the clock crosses 19:30.
        clock.now = dt.datetime(2025, 6, 1, 19, 30, 1)
        await wait_for(lambda: control.broker_settings("cam")["ai_model"] == "motion", 3)
        assert control.broker_settings("cam")["ai_confidence"] == 0.7
        assert [s["ai_model"] for _, s in heard] == ["person", "motion"]
        # Persisted in the state file.
        state_file = Path(control.config.control.state_file)
        await wait_for(lambda: control.state_saved, 3)
        stored = json.loads(state_file.read_text())["cameras"]["cam"]
        assert stored == {"ai_enabled": True, "ai_model": "motion", "ai_confidence": 0.7}
        # With a worker: a mixed change sends only the worker's keys, and the broker's
        # apply once the worker accepted.
        async with serving(control) as worker:
            result = await control.apply_preset("cam", "mixed")
            assert result.success, result.message
            assert worker.commands()[-1]["settings"] == {"brightness": 60}
            assert control.broker_settings("cam")["ai_model"] == "face"
            settings = control.settings("cam")
            assert settings is not None and settings["brightness"] == 60


# -- the viewer page -----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_viewer_page_draws_the_face_box_and_the_motion_badge(tmp_path: Path, page: Page) -> None:
    config = write_config(tmp_path, CAMERAS, extra=ANALYTICS)
    with BrokerProcess(config) as broker:
        wait_analyzer_sync(broker.url)
        assert patch_sync(broker.url, "face", {"ai_enabled": True, "ai_model": "face"})[0] == 200
        assert patch_sync(broker.url, "up", {"ai_enabled": True})[0] == 200
        face = photo("astronaut.png")
        stop = threading.Event()

        def produce() -> None:  # the face camera at 10 fps, a moving square on "up"
            i = 0
            while not stop.is_set():
                post_sync(broker.url, "face", face)
                post_sync(broker.url, "up", scene(20 + (i * 12) % 200 if i > 20 else None))
                i += 1
                time.sleep(0.1)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            page.goto(broker.url + "/")
            page.wait_for_selector('.tile[data-camera="face"] .boxes .box', timeout=20_000)
            label = page.text_content('.tile[data-camera="face"] .boxes .box span') or ""
            assert label.startswith("face ")
            # Until the tile's first photo has loaded, the overlay has the tile's 16:9
            # shape (the "No Data" image's); measure once it has the photo's.
            page.wait_for_function(
                "(() => { const r = document.querySelector("
                "'.tile[data-camera=\"face\"] .boxes').getBoundingClientRect();"
                " return r.height > 0 && Math.abs(r.width / r.height - 1) < 0.02; })()"
            )
            # The box sits over the astronaut's face: about x 180..270, y 60..160 of 512.
            frame = page.locator('.tile[data-camera="face"] .boxes').bounding_box()
            box = page.locator('.tile[data-camera="face"] .boxes .box').first.bounding_box()
            assert frame is not None and box is not None
            x = (box["x"] - frame["x"]) / frame["width"] * 512
            y = (box["y"] - frame["y"]) / frame["height"] * 512
            assert 140 <= x <= 210 and 30 <= y <= 110, (x, y, frame, box)
            assert abs(frame["width"] / frame["height"] - 1.0) < 0.02  # a square photo
            page.wait_for_selector('.tile[data-camera="up"][data-motion="true"] .motion')
            assert page.is_visible('.tile[data-camera="up"] .motion')
            assert page.is_hidden('.tile[data-camera="face"] .motion')
        finally:
            stop.set()
            producer.join(5)


def post_sync(url: str, camera: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{url}/cameras/{camera}/frames",
        data=body,
        method="POST",
        headers={"Content-Type": "image/jpeg"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# -- onnx: a user's model, here a tiny one built by the test --------------------------


def tiny_model(path: Path, size: int = 64) -> None:
    """A YOLO-style detector of brightness: 8 candidates of [cx, cy, w, h, score]; the
    first two (the same box, for non-maximum suppression to merge) score the image's
    mean brightness (0..1 after OpenCV's 1/255 scaling), the rest 0."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    boxes = np.array([[[32, 32, 16, 16]] * 2 + [[8, 8, 4, 4]] * 6], np.float32)
    weights = np.array([[[1.0], [0.95]] + [[0.0]] * 6], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "weights"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output"], axis=2),
    ]
    floats = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", floats, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", floats, [1, 8, 5])],
        initializer=[
            numpy_helper.from_array(boxes, "boxes"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.timeout(60)
async def test_an_onnx_model_of_the_users_reports_its_labels(tmp_path: Path) -> None:
    tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "labels.txt").write_text("lamp\n")
    extra = ANALYTICS + 'onnx_model = "tiny.onnx"\nonnx_labels = "labels.txt"\nonnx_input = 64\n'
    with BrokerProcess(write_config(tmp_path, CAMERAS, extra=extra)) as broker:
        port = broker.port
        await wait_analyzer(port)
        status, answer = await set_ai(port, "up", ai_enabled=True, ai_model="onnx")
        assert status == 200, answer
        white = jpeg(np.full((240, 320, 3), 255, np.uint8))
        black = jpeg(np.zeros((240, 320, 3), np.uint8))
        async with connect(f"ws://127.0.0.1:{port}/ws") as client:
            events = Events()
            client.on("event", events)
            await feed(port, "up", [black] * 8)
            assert events.of("objects_detected", "up") == []
            with trio.fail_after(10):
                while not events.of("objects_detected", "up"):
                    await feed(port, "up", [white], fps=20)
        found = events.of("objects_detected", "up")[0]["data"]
        assert found["model"] == "onnx" and found["label"] == "lamp"
        assert len(found["objects"]) == 1  # the two overlapping candidates merged
        assert found["confidence"] > 0.95
        # [cx, cy, w, h] = [32, 32, 16, 16] of 64x64, in the 320x240 frame's pixels.
        assert found["box"] == [120, 90, 80, 60]


@pytest.mark.timeout(60)
def test_a_hung_analyzer_is_killed_and_restarted(tmp_path: Path) -> None:
    """SIGSTOP: the analyzer says nothing more; after restart_lost_after x lost_after
    (2 x 1 s here) it is killed and a new one connects."""
    extra = ANALYTICS + "[workers]\nrestart_lost_after = 2\nrestart_delay = 0.2\n"
    control = "heartbeat_interval = 0.2\nlost_after = 1.0\n"
    config = write_config(tmp_path, CAMERAS, extra=extra, control=control)
    with BrokerProcess(config) as broker:
        first = wait_analyzer_sync(broker.url)
        os.kill(first["pid"], signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            wait_until(
                lambda: (
                    (h := fetch(broker.url + "/healthz")["analytics"])["connected"]
                    and h["pid"] != first["pid"]
                ),
                20,
                "the hung analyzer was not replaced",
            )
            assert time.monotonic() - stopped >= 1.5  # not before its silence limit
            assert "silent on control" in broker.logs()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first["pid"], signal.SIGKILL)


@pytest.mark.timeout(60)
def test_broker_ctl_sets_ai_settings_of_an_upload_only_camera(broker: BrokerProcess) -> None:
    ctl = [sys.executable, "-m", "broker", "ctl", "--url", f"ws://127.0.0.1:{broker.port}/ws"]
    done = subprocess.run(
        [*ctl, "set", "up", "ai_enabled=true", "ai_model=face_recognition", "ai_confidence=0.7"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    settings = fetch(broker.url + "/api/cameras")[0]["settings"]
    assert (settings["ai_enabled"], settings["ai_model"], settings["ai_confidence"]) == (
        True,
        "face",
        0.7,
    )
    wait_until(
        lambda: fetch(broker.url + "/healthz")["analytics"]["cameras"] == ["up"],
        5,
        "the analyzer was not told",
    )
    refused = subprocess.run(
        [*ctl, "set", "up", "ai_model=yolo"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode != 0 and "ai_model" in refused.stderr + refused.stdout
