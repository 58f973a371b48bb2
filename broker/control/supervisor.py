"""The camera-worker processes the broker starts: one per camera that names a source
or device, restarted with backoff when it exits, stopped with SIGTERM then SIGKILL.

Each worker also connects to the broker's control endpoint (when one is given); an
on-demand camera's worker starts paused and streams only when the broker says so. The
supervisor reports each exit (``on_exit``) so that commands waiting for that worker fail
at once instead of at their timeout.

Healing, both ways:
- A worker silent on control for ``workers.restart_lost_after`` x ``control.lost_after``
  (hung, SIGSTOPped, deadlocked) is killed with SIGKILL and restarted like any worker
  that exited (`lost_too_long` decides; the silence comes from ``silent_for``).
- A worker never outlives its broker: each gets the read end of a *lifeline* pipe whose
  write end only the broker holds (``--lifeline``); the kernel closes it when the broker
  dies, even by SIGKILL, and the worker exits at once. ``PR_SET_PDEATHSIG`` would not do:
  trio forks from a worker thread, and the signal fires when that *thread* exits (about
  10 s later, with the broker alive). As a second guard each worker exits after
  ``workers.orphan_timeout`` seconds without a word from the broker (``--orphan-timeout``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from broker.config import CameraConfig, WorkersConfig
from broker.support.faults import Faults

log = logging.getLogger("broker.supervisor")

# A worker that ran this long was healthy: its next restart starts the backoff afresh.
HEALTHY_RUN = 10.0
# Most seconds between two looks at a worker's silence on control.
HEAL_CHECK = 0.5


def lost_too_long(silent: float | None, running: float, limit: float) -> bool:
    """Whether a worker must be killed: ``limit`` > 0 and it has said nothing on control
    for longer than ``limit`` seconds. ``silent`` is the time since the camera's last
    control message (None: none yet), ``running`` how long this process has run; the
    shorter counts, so a new process is judged by its own silence, not its predecessor's.
    A paused (on-demand) worker heartbeats too: silence is silence."""
    if limit <= 0:
        return False
    quiet = running if silent is None else min(silent, running)
    return quiet > limit


def worker_command(
    camera: CameraConfig,
    endpoint: str,
    log_level: str,
    control: str | None = None,
    heartbeat: float = 1.0,
    *,
    lifeline: int | None = None,
    orphan_timeout: float = 0.0,
) -> list[str]:
    """``lifeline``: the fd of the lifeline's read end (the child must inherit it);
    ``orphan_timeout`` > 0: exit after that long without hearing the broker."""
    source = (
        ["--device", str(camera.device)] if camera.device != "" else ["--source", camera.source]
    )
    # Both sides heartbeat at the broker's interval, so control.lost_after means the same
    # for each. Without a control channel nobody could start a paused worker: it streams.
    # A healthy broker speaks every heartbeat: an orphan timeout shorter than two would
    # have workers leave a live broker.
    orphan = max(orphan_timeout, 2 * heartbeat) if orphan_timeout > 0 else 0.0
    controlled = (
        [
            "--control",
            control,
            "--heartbeat",
            f"{heartbeat:g}",
            *(["--paused"] if camera.on_demand else []),
            *(["--orphan-timeout", f"{orphan:g}"] if orphan else []),
        ]
        if control
        else []
    )
    return [
        sys.executable,
        "-m",
        "cameras.worker",
        "--broker",
        endpoint,
        "--camera-id",
        camera.id,
        *source,
        "--width",
        str(camera.width),
        "--height",
        str(camera.height),
        "--fps",
        f"{camera.fps:g}",
        "--format",
        camera.format,
        "--quality",
        str(camera.quality),
        *(["--tiff-depth", str(camera.tiff_depth)] if camera.tiff_depth != 8 else []),
        "--log-level",
        log_level,
        *controlled,
        *(["--lifeline", str(lifeline)] if lifeline is not None else []),
    ]


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
        silent_for: Callable[[str], float | None] | None = None,
        lost_after: float = 3.0,
        faults: Faults | None = None,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.extra_args = extra_args or {}  # per camera id: its key arguments (CURVE)
        self.faults = faults if faults is not None else Faults()
        self.endpoint = endpoint
        self.control = control  # the broker's control endpoint for its workers
        self.heartbeat = heartbeat  # seconds between control heartbeats
        self.on_exit = on_exit  # (camera id, pid, how it exited), called at each exit
        # Seconds since a camera's worker last spoke on control (None: not yet); with
        # a control endpoint, a worker silent for `lost_limit` is killed and restarted.
        self.silent_for = silent_for
        self.lost_limit = settings.restart_lost_after * lost_after
        self.log_level = log_level
        self.restarts: Counter[str] = Counter()
        self.pids: dict[str, int] = {}
        self.lifeline: int | None = None  # the read end workers inherit, while running

    async def run(
        self,
        cameras: list[CameraConfig],
        processes: Mapping[str, Callable[[int | None], list[str]]] | None = None,
    ) -> None:
        """Keep one worker per camera running until cancelled; then stop them all.
        ``processes``: other processes to keep running the same way (the analyzer), by
        name, each a function of the lifeline's fd that gives its command line."""
        # Both ends are close-on-exec: only the read end reaches workers (pass_fds), so
        # the write end is open in this process alone and closes when it dies.
        read_end, write_end = os.pipe()
        self.lifeline = read_end
        try:
            async with trio.open_nursery() as nursery:
                for camera in cameras:
                    # A worker that cannot even be started (EMFILE, say) is retried
                    # with backoff; it must not take the other cameras down.
                    nursery.start_soon(
                        self.faults.keep_running,
                        "supervisor",
                        self.keep_running,
                        camera,
                        name=f"worker:{camera.id}",
                    )
                for name, command in (processes or {}).items():
                    nursery.start_soon(
                        self.faults.keep_running,
                        "supervisor",
                        self.keep_process,
                        name,
                        command(self.lifeline),
                        name,
                        name=f"process:{name}",
                    )
        finally:
            self.lifeline = None
            os.close(read_end)
            os.close(write_end)

    async def keep_running(self, camera: CameraConfig) -> None:
        command = worker_command(
            camera,
            self.endpoint,
            self.log_level,
            self.control,
            self.heartbeat,
            lifeline=self.lifeline,
            orphan_timeout=self.settings.orphan_timeout if self.control else 0.0,
        )
        command += self.extra_args.get(camera.id, ())
        await self.keep_process(camera.id, command, f"camera {camera.id}: worker")

    async def keep_process(self, key: str, command: list[str], what: str) -> None:
        """Run ``command`` again each time it exits, with backoff; ``key`` names it in
        ``restarts``, ``pids`` and the hooks, ``what`` in the log."""
        delay = self.settings.restart_delay
        while True:
            started = trio.current_time()
            pid, code = await self._run_once(key, command, what)
            ran = trio.current_time() - started
            if self.on_exit is not None:
                self.on_exit(key, pid, describe_exit(code))
            if ran >= HEALTHY_RUN:
                delay = self.settings.restart_delay
            self.restarts[key] += 1
            log.warning(
                "%s exited with %s after %.1f s; restarting in %.1f s",
                what,
                describe_exit(code),
                ran,
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, self.settings.restart_delay_max)

    async def _run_once(self, key: str, command: list[str], what: str) -> tuple[int, int]:
        """Run the worker until it exits; its pid and exit code (negative: the signal)."""
        watchdog = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[trio.Process]) -> None:
            try:
                await trio.run_process(
                    command,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    deliver_cancel=terminate_then_kill(self.settings.stop_grace),
                    # Its own session: a Ctrl-C in the terminal reaches the broker only,
                    # which then stops its workers in order instead of racing them.
                    start_new_session=True,
                    pass_fds=(self.lifeline,) if self.lifeline is not None else (),
                    task_status=task_status,
                )
            finally:
                watchdog.cancel()

        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(run)
            self.pids[key] = process.pid
            log.info("%s started (pid %d)", what, process.pid)
            if self.control and self.silent_for is not None and self.lost_limit > 0:
                nursery.start_soon(self._heal, key, process, watchdog, what)
        self.pids.pop(key, None)
        return process.pid, process.returncode if process.returncode is not None else -1

    async def _heal(
        self,
        camera: str,
        process: trio.Process,
        watchdog: trio.CancelScope,
        what: str = "worker",
    ) -> None:
        """Kill ``process`` once it has been silent on control for `lost_limit`; it is
        then restarted like any worker that exited. Ends when the process does."""
        assert self.silent_for is not None
        interval = min(HEAL_CHECK, self.lost_limit / 4)
        with watchdog:
            started = trio.current_time()
            while True:
                before = trio.current_time()
                await trio.sleep(interval)
                now = trio.current_time()
                if now - before > 2 * interval + 1.0:
                    # This loop itself was held up: so was the task receiving the
                    # workers' messages. Let it catch up before judging anyone.
                    continue
                silent = self.silent_for(camera)
                if lost_too_long(silent, now - started, self.lost_limit):
                    quiet = now - started if silent is None else min(silent, now - started)
                    log.warning(
                        "%s pid %d silent on control for %.1f s "
                        "(limit %g s): killing it to restart it",
                        what,
                        process.pid,
                        quiet,
                        self.lost_limit,
                    )
                    process.kill()
                    return


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
