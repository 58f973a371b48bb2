"""The processes of a benchmark run: the real broker and the load generators (replay
publishers and clients), each a child that talks JSON lines on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5, context: ssl.SSLContext | None = None) -> Any:
    """A JSON answer; ``context``: what an https URL is verified with (a test CA, say)."""
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return json.load(response)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
    }


def wait_for_health(
    process: subprocess.Popen,
    url: str,
    logs: Callable[[], str],
    timeout: float = 20,
    context: ssl.SSLContext | None = None,
) -> None:
    """Poll ``url``/healthz until the broker answers; fail fast if it exits. A 401 (a
    broker with [[tokens]], asked without one) is an answer too: the broker is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}:\n{logs()}")
        try:
            get_json(url + "/healthz", timeout=1, context=context)
            return
        except urllib.error.HTTPError as answer:
            answer.close()
            if answer.code == 401:
                return
            time.sleep(0.1)
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"broker did not answer within {timeout} s:\n{logs()}")


def stop_process(process: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class Child:
    """A load-generator process: commands on stdin, JSON lines read from stdout."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=_env(),
            )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.latest: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "frames" in message and len(message) == 1:
                self.latest = message  # progress, not an answer
            else:
                self.lines.put(message)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, timeout: float) -> dict[str, Any]:
        """The next answer line, or an error naming the child and its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
        raise RuntimeError(
            f"{self.name} gave no answer (exit code {self.process.poll()}):\n{self.tail()}"
        )

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        stop_process(self.process, timeout=5)


class Broker:
    """``python -m broker run CONFIG --listen 127.0.0.1:PORT``, ready once /healthz answers.
    ``ssl_context``: for a config with server.tls_cert, what verifies it (https `url`)."""

    def __init__(self, config: Path, log: Path, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.log = log
        self.ssl_context = ssl_context
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "broker",
                    "run",
                    str(config),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=_env(),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def get_json(self, path: str) -> Any:
        return get_json(self.url + path, context=self.ssl_context)

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for_health(self.process, self.url, self.logs, timeout, self.ssl_context)

    def wait_online(self, camera_ids: list[str], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            online = {c["id"] for c in self.get_json("/api/cameras") if c["online"]}
            if online >= set(camera_ids):
                return
            time.sleep(0.2)
        raise TimeoutError(f"cameras not online after {timeout} s:\n{self.logs()}")

    def stop(self) -> int:
        return stop_process(self.process)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Workspace:
    """A temporary directory for the config, the ipc socket and the logs."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cb-bench-"))

    def keep_logs(self, out: Path) -> Path:
        target = out / "logs"
        target.mkdir(parents=True, exist_ok=True)
        for log in self.path.glob("*.log"):
            shutil.copy(log, target / log.name)
        return target

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
