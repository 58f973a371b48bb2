"""Real broker processes for end-to-end tests: started from a config file on a free
port, waited for until /healthz answers, and always stopped."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from leaks import watch_broker

from benchmarks.procs import free_port, get_json, stop_process, wait_for_health

ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess:
    """``token``: for a config with [[tokens]], what `cameras` and `wait_online` ask with.
    ``ssl_context``: for a config with server.tls_cert, what verifies the broker (its
    `url` is then https)."""

    def __init__(
        self,
        config: Path,
        port: int | None = None,
        log: Path | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.port = port or free_port()
        self.log = log or config.with_suffix(".log")
        self.token = token
        self.ssl_context = ssl_context
        self.process: subprocess.Popen[bytes] | None = None
        watch_broker(config, self.log)  # no token may show in its log

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> BrokerProcess:
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
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for_health(self.process, self.url, self.logs, timeout, self.ssl_context)
        return self

    def cameras(self) -> dict[str, dict]:
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        cameras = get_json(self.url + "/api/cameras" + query, context=self.ssl_context)
        assert isinstance(cameras, list)
        return {c["id"]: c for c in cameras}

    def wait_online(self, *camera_ids: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cameras = self.cameras()
            if all(cameras[c]["online"] for c in camera_ids):
                return
            time.sleep(0.2)
        raise TimeoutError(f"cameras {camera_ids} not online:\n{self.logs()}")

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        assert self.process is not None
        return stop_process(self.process, timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_json(method: str, url: str, body: object = None) -> tuple[int, Any]:
    """A JSON request (``body`` sent as JSON unless None): status and decoded answer,
    errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def wait_until(predicate: Callable[[], object], within: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s until it is true; TimeoutError(what) after ``within``."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def write_config(tmp_path: Path, cameras: str, extra: str = "", control: str = "") -> Path:
    """A config taking no fixed port; its state file goes beside it in ``tmp_path``."""
    path = tmp_path / "broker.toml"
    path.write_text(
        f"[ingest]\nendpoints = []\noffline_after = 1.0\n{extra}\n"
        f"[control]\nendpoints = []\n{control}\n{cameras}"
    )
    return path


def synthetic_camera(camera_id: str, width: int, height: int, fps: float) -> str:
    return (
        f'[[cameras]]\nid = "{camera_id}"\nsource = "test-pattern"\n'
        f"width = {width}\nheight = {height}\nfps = {fps}\n"
    )


def demo_config(tmp_path: Path) -> Path:
    """config/demo.toml, but taking no fixed ingest or control port (tests may run beside
    a demo), with its state file in ``tmp_path``."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = re.sub(r"(?m)^endpoints = .*$", "endpoints = []", text)
    assert text.count("endpoints = []") == 2
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path
