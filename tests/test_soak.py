"""Leaks under churn: a minute of the soak benchmark against a real broker, and the
/healthz counts it relies on.

`python -m benchmarks soak` (benchmarks/README.md, "soak") churns connections over every
output with bad input mixed in while a viewer watches; this runs it for one minute (the
first 15 s are the warm-up, left out of the slopes) and holds it to its targets:

- broker RSS grows by at most 1.5 MB a minute after the warm-up. At this load (2 x 15
  operations a second) a leak of 1 KB per operation would be 1.8 MB a minute; the
  allocator's drift after warm-up measured well under 1 MB a minute.
- open files and trio tasks return to within 2 of their baseline once the churn stops
  (every connection's socket and tasks end; 2 allows for the sampling's own request).
- the broker is alive with no fault counted, no operation got an unexpected answer, and
  the watching viewer kept at least 90% of the camera's fps over the minute, and half of
  it in every 3 s interval (a busy moment on a shared machine delays frames briefly).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from procs import BrokerProcess, get_json, synthetic_camera, wait_until, write_config

from benchmarks import soak

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(420)
def test_a_minute_of_churn_leaks_nothing_and_costs_the_viewer_nothing(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "soak",
            "--minutes",
            "1",
            "--warmup",
            "15",
            "--sample",
            "3",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=390,
    )
    found = list(tmp_path.glob("soak-*.json"))
    assert completed.returncode == 0 and len(found) == 1, (
        completed.stdout[-3000:] + completed.stderr[-6000:]
    )
    result = json.loads(found[0].read_text())
    report = completed.stdout[-3000:]
    broker = result["broker"]
    assert broker["alive"], f"the broker exited at {broker['died_at']} s:\n{broker['log_tail']}"
    assert broker["health"]["faults"] == {}, report
    assert set(result["churn_totals"]) == {"ws", "mux", "mjpeg", "http", "upload", "bad"}
    assert result["operations"] > 1000 and result["failed_operations"] == 0, report
    stats, targets = result["stats"], result["targets"]
    for key in ("files", "tasks"):  # a socket or task per connection: plain to see
        assert stats[key]["settled"] <= stats[key]["baseline"] + soak.SETTLE_TOLERANCE, report
    assert stats["rss_mb"]["slope_per_min"] <= soak.RSS_SLOPE_LIMIT_MB, report
    assert targets["viewer_fps"]["met"], report
    assert Path(found[0].with_suffix(".png")).stat().st_size > 0


def _websocket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /cameras/cam HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return sock


@pytest.mark.timeout(60)
def test_healthz_counts_tasks_and_open_files(tmp_path: Path) -> None:
    config = write_config(tmp_path, synthetic_camera("cam", 160, 120, 5))
    with BrokerProcess(config) as broker:
        broker.wait_online("cam")
        health = get_json(broker.url + "/healthz")
        tasks, files = health["tasks"], health["open_files"]
        assert tasks > 5 and files > 5
        # As /proc shows them from outside, give or take the /healthz request's own socket.
        assert broker.process is not None
        assert abs(files - len(os.listdir(f"/proc/{broker.process.pid}/fd"))) <= 1
        viewers = [_websocket(broker.port) for _ in range(5)]
        try:
            wait_until(
                lambda: get_json(broker.url + "/healthz")["open_files"] >= files + 5,
                10,
                "five viewers' sockets counted",
            )
            assert get_json(broker.url + "/healthz")["tasks"] >= tasks + 5  # a task or more each
        finally:
            for viewer in viewers:
                viewer.close()
        wait_until(
            lambda: (
                (h := get_json(broker.url + "/healthz"))["tasks"] <= tasks
                and h["open_files"] <= files
            ),
            10,
            "tasks and files back after the viewers left",
        )
