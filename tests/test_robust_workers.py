"""Self-healing workers and what a broker leaves behind (issue 9).

- A hung supervised worker (SIGSTOP) is killed and restarted; other cameras stream on.
- Workers die with their broker, even a broker killed with SIGKILL (the lifeline), and
  after ``workers.orphan_timeout`` without a word from it; a restart on the same config
  has exactly one worker per camera and the stored settings.
- A starting broker removes the ipc folders of dead brokers, never a live one's.
- Stale frames (a backlog released after a partition, reordered ones) are never shown
  as live; a camera whose clock is off, or steps, still is.
- Control's background jobs run inside boundaries; an unwritable state file stops
  nothing and /healthz says so.

Pure parts are tested without processes; the rest drives real `broker run` processes.
Camera ids are unique per test, so the workers of a test can be found by pid in /proc
and every one of them is stopped at the end, those a killed broker left behind too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import trio
import zmq
from controlpeer import make_config, running_control, serving, wait_for
from helpers import sample_jpeg
from procs import BrokerProcess, free_port, get_json, http_json, wait_until, write_config
from rawws import RawWebSocket
from survival import Viewer

from broker.control import Control
from broker.control.supervisor import lost_too_long, worker_command
from broker.control.workers import Workers
from broker.core.camera import CLOCK_SETTLE, Freshness
from broker.protocol import stamp, wire
from broker.support import workdir
from cameras.link import keep_connection_fresh

FPS = 10.0
# Fast liveness, with room for a loaded 2-core machine: lost after 1 s of silence,
# killed and restarted after 2 s.
CONTROL = "heartbeat_interval = 0.25\nlost_after = 1.0\n"
HEAL_LIMIT = 2.0


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def camera(camera_id: str, extra: str = "") -> str:
    return (
        f'[[cameras]]\nid = "{camera_id}"\nsource = "test-pattern"\nwidth = 320\n'
        f"height = 240\nfps = {FPS:g}\n{extra}"
    )


def workers_table(**values: float) -> str:
    settings = {"restart_delay": 0.2, "restart_lost_after": HEAL_LIMIT, **values}
    return "[workers]\n" + "".join(f"{key} = {value:g}\n" for key, value in settings.items())


# -- processes ------------------------------------------------------------------------


def worker_pids(camera_id: str) -> set[int]:
    """Every running camera-worker process of ``camera_id`` on this host."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"cameras.worker" in argv and camera_id.encode() in argv and alive(int(entry.name)):
            pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has finished running)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[0] not in ("Z", "X")


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def no_leftovers(*camera_ids: str) -> Iterator[None]:
    """At the end, kill by pid every worker of these cameras still running (a broker
    killed by the test, or a broker without the fix, leaves them behind)."""
    try:
        yield
    finally:
        for camera_id in camera_ids:
            for pid in worker_pids(camera_id):
                kill(pid)


def health(broker: BrokerProcess) -> dict[str, Any]:
    answer = get_json(broker.url + "/healthz")
    assert isinstance(answer, dict)
    return answer


def connected_pids(broker: BrokerProcess, *camera_ids: str) -> dict[str, int] | None:
    """camera -> pid of its worker, once every one of them is connected; else None."""
    workers = health(broker)["control"]["workers"]
    if all(workers.get(c, {}).get("connected") for c in camera_ids):
        return {c: workers[c]["pid"] for c in camera_ids}
    return None


def wait_connected(broker: BrokerProcess, *camera_ids: str, within: float = 30) -> dict[str, int]:
    wait_until(
        lambda: connected_pids(broker, *camera_ids),
        within,
        f"workers of {camera_ids} never all connected:\n{broker.logs()[-3000:]}",
    )
    found = connected_pids(broker, *camera_ids)
    assert found is not None
    return found


def live_again_at(arrivals: list[float], after: float, fps: float, run: int = 5) -> float | None:
    """When frames next arrived at the camera's rate: the first of ``run`` frames after
    ``after`` with gaps under two frame intervals ("No Data" comes once a second)."""
    times = [t for t in arrivals if t >= after]
    for i in range(len(times) - run + 1):
        if all(b - a < 2 / fps for a, b in itertools.pairwise(times[i : i + run])):
            return times[i]
    return None


# -- the decision to restart, without processes -----------------------------------------


def test_lost_too_long_counts_the_shorter_of_silence_and_run_time() -> None:
    assert not lost_too_long(100.0, 100.0, 0)  # 0 = never
    assert not lost_too_long(5.0, 100.0, 9.0)
    assert lost_too_long(9.5, 100.0, 9.0)
    # A new process is judged by its own silence, not by the old one's last word.
    assert not lost_too_long(50.0, 2.0, 9.0)
    assert lost_too_long(50.0, 9.5, 9.0)
    # Never said hello: its run time is its silence.
    assert not lost_too_long(None, 8.0, 9.0)
    assert lost_too_long(None, 9.5, 9.0)


def test_supervised_workers_get_a_lifeline_and_an_orphan_timeout(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, '[[cameras]]\nid = "a"\nsource = "test-pattern"\n')
    command = worker_command(
        cfg.cameras[0], "ipc://x/i", "info", "ipc://x/c", 0.5, lifeline=7, orphan_timeout=15
    )
    assert command[command.index("--lifeline") + 1] == "7"
    assert command[command.index("--orphan-timeout") + 1] == "15"
    # Never shorter than two heartbeats: a healthy broker would lose its workers.
    slow = worker_command(cfg.cameras[0], "e", "info", "ipc://x/c", 10.0, orphan_timeout=15)
    assert slow[slow.index("--orphan-timeout") + 1] == "20"
    # Without a control channel nothing is heard from the broker: no orphan timeout.
    bare = worker_command(cfg.cameras[0], "e", "info", orphan_timeout=15)
    assert "--orphan-timeout" not in bare and "--lifeline" not in bare


async def test_silent_for_is_the_time_since_the_workers_last_word(tmp_path: Path) -> None:
    async with running_control(make_config(tmp_path)) as control:
        assert control.silent_for("cam") is None  # no hello yet
        async with serving(control):
            await trio.sleep(0.5)
            silent = control.silent_for("cam")
            assert silent is not None and silent < 0.4  # heartbeats every 0.2 s
        await trio.sleep(1.0)
        silent = control.silent_for("cam")
        assert silent is not None and silent >= 1.0


# -- stale frames, without processes ---------------------------------------------------

SKEW = -137.25  # the camera's clock runs this far behind ours (seconds)


def steady(
    freshness: Freshness,
    start: float,
    seconds: float,
    fps: float = 10,
    skew: float = SKEW,
    transit: float = 0.01,
) -> list[bool]:
    """Judge frames captured every 1/fps from ``start`` (our clock), each arriving after
    ``transit``, stamped by a camera clock ``skew`` off ours; the verdicts."""
    count = round(seconds * fps)
    return [freshness.live(start + i / fps + transit, start + i / fps + skew) for i in range(count)]


def test_a_skewed_but_steady_clock_is_live() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 30.0))
    # Transit jitter well under max_age changes nothing.
    assert freshness.live(130.0 + 0.6, 130.0 + SKEW)


def test_a_partition_backlog_is_dropped_and_live_frames_follow() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 5.0))
    # 20 s of partition: nothing arrives. Then what the kernel held arrives at once,
    # captured up to 20.5 s ago, followed by live frames.
    healed = 125.0
    backlog = [freshness.live(healed + i * 0.001, 104.5 + i * 0.2 + SKEW) for i in range(6)]
    assert backlog == [False] * 6
    assert all(steady(freshness, healed + 0.01, 3.0))


def test_a_backlog_after_a_silence_longer_than_the_offset_window_is_still_dropped() -> None:
    freshness = Freshness(max_age=1.0, window=5.0)
    assert all(steady(freshness, 100.0, 12.0))
    assert not freshness.live(200.0, 150.0 + SKEW)  # silence of ~90 s: still judged


def test_a_reordered_old_frame_is_dropped() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 5.0))
    # Arrives on time with the others, but was captured 3 s before the newest shown.
    assert not freshness.live(105.0, 101.9 + SKEW)
    assert freshness.live(105.1, 105.05 + SKEW)


def test_a_clock_step_back_is_accepted_after_a_short_settle() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 5.0))
    # The camera's clock is set back a minute: every frame now looks 60 s old.
    verdicts = steady(freshness, 105.0, 5.0, skew=SKEW - 60)
    settled = verdicts.index(True)
    assert not any(verdicts[:settled])
    assert settled / 10 <= CLOCK_SETTLE + 0.2  # dropped for about a second, no more
    assert all(verdicts[settled:])
    # A backlog after the step is judged against the new baseline.
    assert not freshness.live(112.0, 109.0 + SKEW - 60)


def test_a_clock_step_forward_is_accepted_at_once() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 5.0))
    assert all(steady(freshness, 105.0, 5.0, skew=SKEW + 3600))


def test_a_late_burst_shorter_than_the_settle_does_not_rebase() -> None:
    freshness = Freshness(max_age=1.0)
    assert all(steady(freshness, 100.0, 5.0))
    # Old frames trickle in for most of a second between live ones: each is dropped,
    # each live frame ends the run, so the baseline never moves.
    for i in range(20):
        now = 105.0 + i * 0.1
        assert not freshness.live(now, now - 5.0 + SKEW)
        assert freshness.live(now + 0.05, now + 0.04 + SKEW)


# -- the ipc folders, without a broker ---------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_broker_folder_names_its_owner(tmp_path: Path) -> None:
    folder = workdir.create(tmp_path)
    assert folder.name.startswith(workdir.PREFIX)
    assert folder.stat().st_mode & 0o777 == 0o700
    owner = workdir.read_owner(folder / workdir.OWNER_FILE)
    assert owner == (os.getpid(), workdir.start_time(os.getpid()))
    assert workdir.remove_stale(tmp_path) == []  # we are alive
    assert folder.exists()


def fake_folder(parent: Path, name: str, owner: str | None) -> Path:
    folder = parent / (workdir.PREFIX + name)
    folder.mkdir(mode=0o700)
    (folder / "ingest.ipc").write_bytes(b"")
    if owner is not None:
        (folder / workdir.OWNER_FILE).write_text(owner + "\n")
    return folder


def test_only_folders_of_dead_brokers_of_this_user_are_removed(tmp_path: Path) -> None:
    dead = fake_folder(tmp_path, "dead", str(dead_pid()))
    reused = fake_folder(tmp_path, "reused", f"{os.getpid()} 1")  # our pid, not our start
    live = fake_folder(tmp_path, "live", f"{os.getpid()} {workdir.start_time(os.getpid())}")
    no_owner = fake_folder(tmp_path, "starting", None)  # just made, or an older broker's
    garbled = fake_folder(tmp_path, "garbled", "not a pid")
    foreign = fake_folder(tmp_path, "foreign", str(dead_pid()))
    if os.geteuid() == 0:
        os.chown(foreign, 4321, 4321)
    (tmp_path / (workdir.PREFIX + "file")).write_text("not a folder")
    link = tmp_path / (workdir.PREFIX + "link")
    link.symlink_to(dead)
    removed = workdir.remove_stale(tmp_path)
    assert sorted(removed) == sorted([dead, reused]) or (
        os.geteuid() != 0 and sorted(removed) == sorted([dead, reused, foreign])
    )
    assert not dead.exists() and not reused.exists()
    assert live.exists() and no_owner.exists() and garbled.exists()
    if os.geteuid() == 0:
        assert foreign.exists()


# -- workers that outlive their broker ------------------------------------------------


def start_worker(
    camera_id: str, *extra: str, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cameras.worker",
            "--broker",
            "tcp://127.0.0.1:9",
            "--camera-id",
            camera_id,
            "--source",
            "test-pattern",
            "--width",
            "160",
            "--height",
            "120",
            "--fps",
            "5",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
    )


def stderr_of(process: subprocess.Popen[bytes]) -> IO[bytes]:
    """A `start_worker` worker's standard error (a pipe)."""
    assert process.stderr is not None
    return process.stderr


def wait_exit(process: subprocess.Popen, within: float) -> float | None:
    """Seconds until ``process`` exited, or None if it still runs after ``within``."""
    started = time.monotonic()
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_worker_exits_at_once_when_its_lifeline_closes() -> None:
    read_end, write_end = os.pipe()
    worker = start_worker(unique("lifeline"), "--lifeline", str(read_end), pass_fds=(read_end,))
    os.close(read_end)
    try:
        assert wait_exit(worker, 3.0) is None  # the broker (this test) is alive
        os.close(write_end)  # what the kernel does when the broker dies
        took = wait_exit(worker, 5.0)
        assert took is not None and took < 1.0, took
        assert worker.returncode == 0
        assert b"lifeline closed" in stderr_of(worker).read()
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)
        worker.kill()
        worker.wait()
        stderr_of(worker).close()


@pytest.mark.timeout(60)
def test_a_worker_exits_after_the_orphan_timeout_and_a_hand_started_one_waits() -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)  # a broker that never answers
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    control = f"tcp://127.0.0.1:{port}"
    supervised = start_worker(
        unique("orphan"), "--control", control, "--heartbeat", "0.2", "--orphan-timeout", "1.5"
    )
    by_hand = start_worker(unique("by-hand"), "--control", control, "--heartbeat", "0.2")
    try:
        took = wait_exit(supervised, 15.0)
        assert took is not None, "the supervised worker outlived its silent broker"
        assert supervised.returncode == 0
        assert b"no word from its broker" in stderr_of(supervised).read()
        assert by_hand.poll() is None  # it waits for its broker forever
    finally:
        for process in (supervised, by_hand):
            process.kill()
            process.wait()
            stderr_of(process).close()
        context.destroy(linger=0)


# -- a hung worker, a killed broker: real brokers -----------------------------------------


@pytest.mark.timeout(120)
def test_a_hung_worker_is_killed_and_restarted_while_other_cameras_stream(
    tmp_path: Path,
) -> None:
    hung, other = unique("hung"), unique("other")
    config = write_config(tmp_path, camera(hung) + camera(other), workers_table(), CONTROL)
    with no_leftovers(hung, other), BrokerProcess(config) as broker:
        before = wait_connected(broker, hung, other)
        with Viewer(broker.port, hung) as hung_viewer, Viewer(broker.port, other) as viewer:
            stopped = time.monotonic()
            os.kill(before[hung], signal.SIGSTOP)
            try:
                wait_until(
                    lambda: (
                        (connected_pids(broker, hung) or {}).get(hung) not in (None, before[hung])
                    ),
                    HEAL_LIMIT + 15,
                    f"no new worker said hello:\n{broker.logs()[-3000:]}",
                )
                hello = time.monotonic() - stopped
                wait_until(
                    lambda: live_again_at(hung_viewer.arrivals, stopped + 1.0, FPS),
                    10,
                    "the hung camera's viewer never got live frames again",
                )
            finally:
                kill(before[hung])
            live = live_again_at(hung_viewer.arrivals, stopped + 1.0, FPS)
            assert live is not None
            time.sleep(1.0)
            viewer.assert_kept(FPS, since=stopped)
        print(
            f"\nSIGSTOP -> new worker's hello {hello:.1f} s, -> live frames again "
            f"{live - stopped:.1f} s (limit {HEAL_LIMIT:g} s of silence)"
        )
        assert not alive(before[hung])
        assert hello < HEAL_LIMIT + 10
        answer = health(broker)
        assert answer["worker_restarts"].get(hung) == 1
        assert answer["worker_restarts"].get(other, 0) == 0
        assert broker.logs().count("silent on control") == 1


@pytest.mark.timeout(120)
def test_workers_die_with_a_killed_broker_and_a_restart_has_one_each(tmp_path: Path) -> None:
    cameras = [unique("a"), unique("b"), unique("paused")]
    always, other, paused = cameras
    # The orphan timeout is long: the workers must go because of the lifeline.
    config = write_config(
        tmp_path,
        camera(always) + camera(other) + camera(paused, "on_demand = true\n"),
        workers_table(orphan_timeout=60),
        CONTROL,
    )
    state_file = tmp_path / "camera-broker.state.json"
    settings_url = f"/api/cameras/{always}/settings"
    with no_leftovers(*cameras):
        first = BrokerProcess(config).start()
        try:
            pids = wait_connected(first, *cameras)
            code, answer = http_json("PATCH", first.url + settings_url, {"brightness": 70})
            assert code == 200 and answer["success"], answer
            wait_until(
                lambda: (
                    state_file.exists()
                    and json.loads(state_file.read_text())["cameras"].get(always)
                    == {"brightness": 70}
                ),
                10,
                "not stored",
            )
            folder = Path(
                next(
                    arg
                    for arg in Path(f"/proc/{pids[always]}/cmdline").read_text().split("\0")
                    if arg.startswith("ipc://")
                ).removeprefix("ipc://")
            ).parent
            assert folder.exists()
            assert first.process is not None
            first.process.kill()
            killed = time.monotonic()
            first.process.wait()
            wait_until(
                lambda: not any(alive(pid) for pid in pids.values()),
                10,
                f"workers outlived their broker: {[p for p in pids.values() if alive(p)]}",
            )
            gone = time.monotonic() - killed
        finally:
            first.stop()
        print(f"\nbroker SIGKILL -> all {len(pids)} workers gone in {gone:.2f} s")
        assert gone < 3.0
        with BrokerProcess(config) as second:
            again = wait_connected(second, *cameras)
            assert not set(again.values()) & set(pids.values())
            time.sleep(1.0)  # a second worker per camera would be running by now
            assert {c: len(worker_pids(c)) for c in cameras} == dict.fromkeys(cameras, 1)

            def restored() -> bool:
                code, answer = http_json("GET", second.url + settings_url)
                return code == 200 and answer["settings"].get("brightness") == 70

            wait_until(restored, 30, "settings not restored:\n" + second.logs()[-3000:])
            assert not folder.exists()  # the dead broker's ipc folder, removed at start


@pytest.mark.timeout(120)
def test_a_starting_broker_removes_dead_brokers_folders_not_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the brokers' temporary folder
    first_cam, second_cam = unique("first"), unique("second")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = write_config(tmp_path / "one", camera(first_cam), workers_table(), CONTROL)
    two = write_config(tmp_path / "two", camera(second_cam), workers_table(), CONTROL)
    with no_leftovers(first_cam, second_cam), BrokerProcess(one) as first:
        wait_connected(first, first_cam)
        (live,) = [f for f in temp.iterdir() if f.name.startswith(workdir.PREFIX)]
        owner = workdir.read_owner(live / workdir.OWNER_FILE)
        assert first.process is not None
        assert owner is not None and owner[0] == first.process.pid
        dead = fake_folder(temp, "dead", str(dead_pid()))
        with BrokerProcess(two) as second, Viewer(first.port, first_cam) as viewer:
            since = time.monotonic()
            wait_connected(second, second_cam)
            assert not dead.exists()
            assert live.exists() and (live / "control.ipc").exists()
            time.sleep(2.0)
            viewer.assert_kept(FPS, since)  # the first broker's worker is still connected
            assert connected_pids(first, first_cam) is not None
        assert f"removed {dead}" in second.logs()


# -- stale frames end to end -------------------------------------------------------------


class Camera:
    """An external worker played by the test: a real PUB sending stamped frames whose
    capture times run ``skew`` seconds off our clock."""

    def __init__(self, endpoint: str, camera_id: str, skew: float) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.camera_id, self.skew = camera_id, skew
        self.jpeg = sample_jpeg(160, 120)
        self.seq = 0

    def send(self, captured_at: float | None = None) -> int:
        """One frame captured at ``captured_at`` (our clock; default now); its seq."""
        at = (time.time() if captured_at is None else captured_at) + self.skew
        seq, self.seq = self.seq, self.seq + 1
        header = wire.FrameHeader(self.camera_id, seq, at, 160, 120)
        self.socket.send_multipart(wire.encode(header, stamp.stamp(self.jpeg, seq, at)))
        return seq

    async def stream(self, seconds: float) -> list[tuple[int, float]]:
        """Live frames at FPS for ``seconds``: (seq, when sent, our clock)."""
        sent = []
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            sent.append((self.send(), time.time()))
            await trio.sleep(1 / FPS)
        return sent

    def close(self) -> None:
        self.context.destroy(linger=0)


@pytest.mark.timeout(90)
async def test_a_backlog_after_silence_is_never_shown_and_is_counted(tmp_path: Path) -> None:
    camera_id = unique("ext")
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[ingest]\nendpoints = ["tcp://127.0.0.1:{port}"]\noffline_after = 1.0\n'
        f'[control]\nendpoints = []\n[[cameras]]\nid = "{camera_id}"\n'
    )
    broker = BrokerProcess(config)
    await trio.to_thread.run_sync(broker.start)
    # The camera's clock is two minutes behind ours: its live frames are still live.
    publisher = Camera(f"tcp://127.0.0.1:{port}", camera_id, skew=-120.0)
    shown: list[int] = []
    try:
        ws, head = await RawWebSocket.connect(broker.port, f"/cameras/{camera_id}")
        assert head.startswith(b"HTTP/1.1 101"), head

        async def watch() -> None:
            while (message := await ws.receive()) is not None:
                stamped = stamp.read(message[1]) if message[0] == 2 else None
                if stamped is not None:
                    shown.append(stamped[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0.3)  # the PUB connects
            before = await publisher.stream(2.0)
            # Silence (a partition): the camera goes offline; frames captured meanwhile
            # are held by the network, then delivered at once with the live ones after.
            silent_from = time.time()
            await trio.sleep(2.5)
            backlog = [publisher.send(silent_from + 0.2 * i) for i in range(6)]
            after = await publisher.stream(2.0)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        await ws.aclose()
        assert not set(backlog) & set(shown), f"stale frames shown: {set(backlog) & set(shown)}"
        live_after = [seq for seq, _ in after]
        assert len(set(live_after) & set(shown)) >= 0.8 * len(live_after), shown
        assert len(set(seq for seq, _ in before) & set(shown)) >= 0.8 * len(before)
        errors = health(broker)["ingest"]["errors"]
        assert errors.get("stale") == len(backlog), errors
        with urllib.request.urlopen(broker.url + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f'camera_broker_ingest_errors_total{{reason="stale"}} {len(backlog)}.0' in metrics
    finally:
        publisher.close()
        broker.stop()


# -- background jobs and the state file ----------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_failing_heartbeat_job_is_restarted_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[tuple[Any, ...]] = []
    lose = Workers.lose

    def lose_once(self: Workers, *args: Any) -> None:
        if not failures:
            failures.append(args)
            raise RuntimeError("a bug in declaring a worker lost")
        lose(self, *args)

    monkeypatch.setattr(Workers, "lose", lose_once)
    async with running_control(make_config(tmp_path, lost_after=0.6)) as control:
        listener = control.events.listen()
        async with serving(control):
            pass  # said hello, then fell silent
        await wait_for(lambda: failures, 5)
        assert control.faults.counts["control:heartbeats"] == 1
        # The job was restarted: the worker is declared lost after all.
        await wait_for(lambda: not control.connected("cam"), 5)
        events = []
        while (event := listener.get_nowait()) is not None:
            events.append(event.event)
        assert "worker_lost" in events


@pytest.mark.timeout(30)
async def test_a_failing_after_hello_job_costs_that_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def _after_hello(self: Control, link: Any) -> None:  # its boundary goes by name
        raise KeyError("a bug while restoring settings")

    monkeypatch.setattr(Control, "_after_hello", _after_hello)
    async with running_control(make_config(tmp_path)) as control, serving(control):
        await wait_for(lambda: control.faults.counts["control:after-hello"] == 1, 5)
        result = await control.command("cam", "get_status")
        assert result.success, result  # control carries on


@pytest.mark.timeout(120)
def test_an_unwritable_state_file_stops_nothing_and_healthz_says_so(tmp_path: Path) -> None:
    cam = unique("cam")
    folder = tmp_path / "state"
    folder.mkdir()
    state_file = folder / "broker.state.json"
    config = write_config(
        tmp_path, camera(cam), workers_table(), CONTROL + f'state_file = "{state_file}"\n'
    )
    settings_url = f"/api/cameras/{cam}/settings"
    with no_leftovers(cam), BrokerProcess(config) as broker, Viewer(broker.port, cam) as viewer:
        wait_connected(broker, cam)
        assert health(broker)["control"]["state_file"] == {"path": str(state_file), "ok": True}
        # The folder becomes unwritable (even for root: its path is now a file).
        aside = tmp_path / "state-aside"
        folder.rename(aside)
        folder.write_text("in the way")
        since = time.monotonic()
        code, answer = http_json("PATCH", broker.url + settings_url, {"brightness": 65})
        assert code == 200 and answer["success"], answer
        assert answer["settings"]["brightness"] == 65  # applied live all the same

        def failing() -> dict[str, Any] | None:
            report = health(broker)["control"]["state_file"]
            return report if not report["ok"] else None

        wait_until(failing, 10, "healthz never said the state file cannot be written")
        report = failing()
        assert report is not None and report["path"] == str(state_file)
        assert "cannot write" in report["error"], report
        time.sleep(1.0)
        viewer.assert_kept(FPS, since)
        code, answer = http_json("GET", broker.url + settings_url)
        assert code == 200 and answer["settings"]["brightness"] == 65
        # Writable again: the retry writes it and the report is back to ok.
        folder.unlink()
        aside.rename(folder)
        wait_until(
            lambda: health(broker)["control"]["state_file"]["ok"],
            15,
            "the state file was never written again",
        )
        assert json.loads(state_file.read_text())["cameras"][cam] == {"brightness": 65}
        assert health(broker)["status"] == "ok"


async def test_a_state_file_in_a_missing_folder_is_reported_from_the_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "state.json"
    async with running_control(make_config(tmp_path, state_file=str(path))) as control:
        report = control.health()["state_file"]
        assert report["path"] == str(path) and not report["ok"]
        assert "is not a folder" in report["error"], report
        async with serving(control):
            result = await control.command("cam", "update_settings", {"brightness": 61})
            assert result.success and result.settings["brightness"] == 61, result
        assert not control.health()["state_file"]["ok"]


def test_worker_sockets_drop_a_dead_connection_and_retry_connecting_quickly() -> None:
    # Measured with tests/test_faults.py (network namespaces): after a 20 s partition
    # the first live frame came 6.6 s after healing (TCP's retransmission backoff), and
    # 0.3 s with these options.
    context = zmq.Context()
    try:
        socket = context.socket(zmq.PUB)
        keep_connection_fresh(socket, 0.5)
        assert socket.getsockopt(zmq.HEARTBEAT_IVL) == 500
        assert socket.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 1500
        assert socket.getsockopt(zmq.CONNECT_TIMEOUT) == 1000
        socket.close(linger=0)
    finally:
        context.destroy(linger=0)


async def test_a_worker_that_cannot_be_started_is_retried_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spawning fails (here: no such program; in life EMFILE or ENOMEM): the supervisor
    counts it, waits, tries again, and the caller's nursery lives on."""
    from broker.config import CameraConfig, WorkersConfig
    from broker.control import supervisor as supervision
    from broker.support.faults import Faults

    monkeypatch.setattr(supervision, "worker_command", lambda *a, **k: ["/nonexistent/worker"])
    faults = Faults()
    watcher = supervision.Supervisor(WorkersConfig(), "ipc:///tmp/none", faults=faults)
    camera = CameraConfig(id="cam", source="test-pattern")
    with trio.move_on_after(1.2):
        await watcher.run([camera])
    assert faults.counts["supervisor"] >= 2  # tried again after a backoff
