"""End to end with real processes: `broker run` with its camera-worker processes,
external workers, restarts, shutdown, and `broker check`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import trio
from helpers import binary_message, read_stamp
from procs import BrokerProcess, free_port, get_json, synthetic_camera, write_config
from trio_websocket import open_websocket_url

from broker.protocol import stamp

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def receive_images(url: str, count: int) -> list[bytes]:
    async with open_websocket_url(url) as ws:
        with trio.fail_after(15):
            return [await binary_message(ws) for _ in range(count)]


def size_of(jpeg: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.shape[1], image.shape[0]


@pytest.mark.timeout(90)
async def test_broker_runs_two_workers_and_serves_each_camera(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        synthetic_camera("big", 640, 480, 10) + synthetic_camera("small", 320, 240, 15),
    )
    with BrokerProcess(config) as broker:
        broker.wait_online("big", "small")
        for camera, size in (("big", (640, 480)), ("small", (320, 240))):
            images = await receive_images(f"ws://127.0.0.1:{broker.port}/cameras/{camera}", 8)
            assert all(size_of(image) == size for image in images)
            seqs = [read_stamp(image)[0] for image in images]
            assert seqs == sorted(set(seqs))
        cameras = broker.cameras()
        assert 7 <= cameras["big"]["fps"] <= 12 and 11 <= cameras["small"]["fps"] <= 17
        assert broker.process is not None
        workers = children(broker.process.pid)
        assert len(workers) == 2
        broker.process.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert broker.process.wait(10) == 0
        assert time.monotonic() - started < 6
        assert not any(alive(pid) for pid in workers)


@pytest.mark.timeout(90)
async def test_killed_worker_is_restarted_and_no_data_shown_meanwhile(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, synthetic_camera("cam", 320, 240, 10), extra="[workers]\nrestart_delay = 3.0"
    )
    with BrokerProcess(config) as broker:
        broker.wait_online("cam")
        assert broker.process is not None
        (worker,) = children(broker.process.pid)
        async with open_websocket_url(f"ws://127.0.0.1:{broker.port}/cameras/cam") as ws:
            with trio.fail_after(5):
                assert stamp.read(await binary_message(ws)) is not None
            os.kill(worker, signal.SIGKILL)
            with trio.fail_after(10):  # offline after 1 s: the "No Data" image
                while stamp.read(message := await binary_message(ws)) is not None:
                    pass
            assert size_of(message) == (320, 240)
            with trio.fail_after(20):  # restarted: live frames again, on the same socket
                while stamp.read(await binary_message(ws)) is None:
                    pass
        (restarted,) = children(broker.process.pid)
        assert restarted != worker
        assert get_json(broker.url + "/healthz")["worker_restarts"] == {"cam": 1}
        assert "exited with signal SIGKILL" in broker.logs()


@pytest.mark.timeout(60)
async def test_external_worker_over_tcp(tmp_path: Path) -> None:
    ingest_port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[ingest]\nendpoints = ["tcp://127.0.0.1:{ingest_port}"]\n'
        "[control]\nendpoints = []\n"
        '[[cameras]]\nid = "front"\nwidth = 320\nheight = 240\n'
    )
    with BrokerProcess(config) as broker:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cameras.worker",
                "--broker",
                f"tcp://127.0.0.1:{ingest_port}",
                "--camera-id",
                "front",
                "--source",
                "test-pattern",
                "--width",
                "320",
                "--height",
                "240",
                "--fps",
                "10",
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            broker.wait_online("front")
            images = await receive_images(f"ws://127.0.0.1:{broker.port}/", 3)
            assert all(size_of(image) == (320, 240) for image in images)
        finally:
            worker.terminate()
            assert worker.wait(5) == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_check_accepts_the_shipped_configs() -> None:
    for name in ("demo.toml", "example.toml"):
        result = run_cli("check", str(ROOT / "config" / name))
        assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_check_prints_every_error_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nqueue_depth = 0\nbogus = 1\n[[cameras]]\nid = "a"\nfps = -1\n')
    result = run_cli("check", str(config))
    assert result.returncode == 2
    assert "server.queue_depth: must be an integer from 1 to 64, got 0" in result.stderr
    assert "server.bogus: unknown key" in result.stderr
    assert "cameras[0].fps: must be a number from 0.1 to 240, got -1" in result.stderr


def test_run_reports_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, "")
        result = run_cli("run", str(config), "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 1
    assert "cannot start" in result.stderr


@pytest.mark.timeout(90)
def test_every_http_output_of_a_running_broker(tmp_path: Path) -> None:
    """`broker run` as a process with a worker: each HTTP endpoint answers as documented."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    config = write_config(tmp_path, synthetic_camera("cam", 320, 240, 10))
    with BrokerProcess(config) as broker:
        broker.wait_online("cam")
        with urllib.request.urlopen(broker.url + "/cameras/cam/snapshot.jpg", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and int(r.headers["X-Frame-Seq"]) >= 0
            assert size_of(r.read()) == (320, 240)
        with urllib.request.urlopen(broker.url + "/cameras/cam/next.jpg?after=-1", timeout=5) as r:
            first = int(r.headers["X-Frame-Seq"])
        with urllib.request.urlopen(
            broker.url + f"/cameras/cam/next.jpg?after={first}", timeout=5
        ) as r:
            assert int(r.headers["X-Frame-Seq"]) > first
        with urllib.request.urlopen(broker.url + "/cameras/cam/mjpeg", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert r.readline().startswith(b"--camera-broker-frame")
        jpeg = stamp.stamp(
            cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes(), 1, 1.0
        )
        upload = urllib.request.Request(
            broker.url + "/cameras/cam/frames", data=jpeg, headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(upload, timeout=5) as r:
            assert r.status == 201
        stats = get_json(broker.url + "/api/stats")
        assert stats["cameras"][0]["id"] == "cam" and stats["cameras"][0]["frames_received"] > 0
        with urllib.request.urlopen(broker.url + "/metrics", timeout=5) as r:
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert {"camera_broker_frames_received", "camera_broker_latency_seconds"} <= names
        assert (
            json.loads(urllib.request.urlopen(broker.url + "/healthz", timeout=5).read())["status"]
            == "ok"
        )
