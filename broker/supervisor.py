"""The camera-worker processes the broker starts: one per camera that names a source
or device, restarted with backoff when it exits, stopped with SIGTERM then SIGKILL.

Each worker also connects to the broker's control endpoint (when one is given); an
on-demand camera's worker starts paused and streams only when the broker says so. The
supervisor reports each exit (``on_exit``) so that commands waiting for that worker fail
at once instead of at their timeout."""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from broker.config import CameraConfig, WorkersConfig

log = logging.getLogger("broker.supervisor")

# A worker that ran this long was healthy: its next restart starts the backoff afresh.
HEALTHY_RUN = 10.0


def worker_command(
    camera: CameraConfig,
    endpoint: str,
    log_level: str,
    control: str | None = None,
    heartbeat: float = 1.0,
) -> list[str]:
    source = ["--device", camera.device] if camera.device else ["--source", camera.source]
    # Both sides heartbeat at the broker's interval, so control.lost_after means the same
    # for each. Without a control channel nobody could start a paused worker: it streams.
    controlled = [
        "--control", control, "--heartbeat", f"{heartbeat:g}",
        *(["--paused"] if camera.on_demand else []),
    ]  # fmt: skip
    return [
        sys.executable, "-m", "cameras.worker",
        "--broker", endpoint,
        "--camera-id", camera.id,
        *source,
        "--width", str(camera.width),
        "--height", str(camera.height),
        "--fps", f"{camera.fps:g}",
        "--format", camera.format,
        "--quality", str(camera.quality),
        "--log-level", log_level,
        *(controlled if control else []),
    ]  # fmt: skip


def terminate_then_kill(grace: float) -> Callable[[trio.Process], Awaitable[None]]:
    async def deliver_cancel(process: trio.Process) -> None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await process.wait()
            return
        log.warning("worker pid %d ignored SIGTERM for %.1f s; killing it", process.pid, grace)
        process.kill()

    return deliver_cancel


class Supervisor:
    def __init__(
        self,
        settings: WorkersConfig,
        endpoint: str,
        log_level: str = "info",
        *,
        control: str | None = None,
        heartbeat: float = 1.0,
        on_exit: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.control = control  # the broker's control endpoint for its workers
        self.heartbeat = heartbeat  # seconds between control heartbeats
        self.on_exit = on_exit  # (camera id, pid, how it exited), called at each exit
        self.log_level = log_level
        self.restarts: Counter[str] = Counter()
        self.pids: dict[str, int] = {}

    async def run(self, cameras: list[CameraConfig]) -> None:
        """Keep one worker per camera running until cancelled; then stop them all."""
        async with trio.open_nursery() as nursery:
            for camera in cameras:
                nursery.start_soon(self.keep_running, camera, name=f"worker:{camera.id}")

    async def keep_running(self, camera: CameraConfig) -> None:
        delay = self.settings.restart_delay
        command = worker_command(
            camera, self.endpoint, self.log_level, self.control, self.heartbeat
        )
        while True:
            started = trio.current_time()
            pid, code = await self._run_once(camera, command)
            ran = trio.current_time() - started
            if self.on_exit is not None:
                self.on_exit(camera.id, pid, describe_exit(code))
            if ran >= HEALTHY_RUN:
                delay = self.settings.restart_delay
            self.restarts[camera.id] += 1
            log.warning(
                "camera %s: worker exited with %s after %.1f s; restarting in %.1f s",
                camera.id,
                describe_exit(code),
                ran,
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, self.settings.restart_delay_max)

    async def _run_once(self, camera: CameraConfig, command: list[str]) -> tuple[int, int]:
        """Run the worker until it exits; its pid and exit code (negative: the signal)."""
        run = functools.partial(
            trio.run_process, command, check=False, stdin=subprocess.DEVNULL,
            deliver_cancel=terminate_then_kill(self.settings.stop_grace),
            # Its own session: a Ctrl-C in the terminal reaches the broker only, which
            # then stops its workers in order instead of racing them.
            start_new_session=True,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(run)
            self.pids[camera.id] = process.pid
            log.info("camera %s: worker started (pid %d)", camera.id, process.pid)
        self.pids.pop(camera.id, None)
        return process.pid, process.returncode if process.returncode is not None else -1


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
