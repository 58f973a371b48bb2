"""Analytics end to end: a real `broker run` with [analytics] enabled supervises a real
camera-analyzer; frames uploaded over HTTP to a camera without a worker are analysed,
and the results come back as /ws events (through the client library), in
/api/cameras/{id}/detections, /api/stats, /metrics and /healthz.

The photographs ship inside scikit-image's wheel (skimage/data/): nothing downloaded."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage
import trio
from helpers import get, http
from procs import BrokerProcess, write_config

from broker.client import connect

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
    return (
        f"POST /cameras/{camera}/frames HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
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
    assert stopped["data"]["time"] >= moving_until + 0.9  # motion_settle = 1.0
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


@pytest.mark.timeout(60)
async def test_sigkill_of_the_analyzer_restarts_it_and_reports_it(broker: BrokerProcess) -> None:
    port = broker.port
    first = await wait_analyzer(port)
    events: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        client.on("event", lambda m: events.append(m))
        os.kill(first["pid"], signal.SIGKILL)
        with trio.fail_after(15):
            while True:
                health = (await get_json(port, "/healthz"))["analytics"]
                if health["connected"] and health["pid"] != first["pid"]:
                    break
                await feed(port, "up", [scene(None)], fps=20)  # frames go on meanwhile
        with trio.fail_after(5):
            while not any(m["event"] == "analyzer_started" for m in events):
                await trio.sleep(0.05)
    kinds = [m["event"] for m in events]
    assert "analyzer_exited" in kinds, kinds
    assert health["restarts"] == 1
    exited = next(m for m in events if m["event"] == "analyzer_exited")
    assert exited["data"]["pid"] == first["pid"] and "SIGKILL" in exited["data"]["reason"]
