"""The run every broker scenario shares: a workspace, the broker config, the replay
publishers, the client processes, the warm-up and the measured window.

A scenario builds a `Run`, starts what it needs (``run.broker``, `start_replays`,
`start_clients`), waits out its warm-up with `wait` and calls `measure`; `collect`
wraps it all so every process is stopped and the logs are kept when something fails.
"""

from __future__ import annotations

import argparse
import resource
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.procs import Broker, Child, Workspace

# The broker binds a ZeroMQ control socket (tcp://127.0.0.1:5556) unless told otherwise:
# benchmark brokers bind none, so several can run at once (and beside a real broker).
NO_CONTROL_SOCKET = "[control]\nendpoints = []\n"


@dataclass
class Run:
    args: argparse.Namespace
    work: Workspace
    broker: Broker | None = None
    replays: list[Child] = field(default_factory=list)
    clients: list[Child] = field(default_factory=list)
    samples: list[dict[str, float | str]] = field(default_factory=list)

    @property
    def camera_ids(self) -> list[str]:
        return [f"cam{i}" for i in range(self.args.cameras)]

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.work.path / 'bench.ipc'}"

    @property
    def tls(self) -> bool:
        """``--tls``: the broker serves https/wss with a self-signed certificate."""
        return bool(getattr(self.args, "tls", False))

    @property
    def cert(self) -> Path:
        return self.work.path / "cert.pem"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.cert)) if self.tls else None


def write_config(run: Run, extra: str = "") -> Path:
    """The broker config for ``run``'s cameras; ``extra`` is appended (more tables).
    With ``--tls`` a self-signed certificate for 127.0.0.1 is made for it."""
    a = run.args
    if run.tls:
        from broker.trust import selfsigned

        selfsigned.write(selfsigned.generate(["127.0.0.1"]), run.work.path, force=True)
        extra += f'\n[server]\ntls_cert = "{run.cert}"\ntls_key = "{run.work.path / "key.pem"}"\n'
    return write_broker_config(
        run.work.path, run.endpoint, run.camera_ids, a.width, a.height, a.fps, extra
    )


def write_broker_config(
    directory: Path,
    endpoint: str,
    camera_ids: list[str],
    width: int = 1280,
    height: int = 720,
    fps: float = 15,
    extra: str = "",
) -> Path:
    """A broker config for external publishers on ``endpoint``, no control socket;
    returns its path."""
    cameras = "".join(
        f'[[cameras]]\nid = "{cid}"\nwidth = {width}\nheight = {height}\nfps = {fps}\n'
        for cid in camera_ids
    )
    path = directory / "broker.toml"
    tables = f'[ingest]\nendpoints = ["{endpoint}"]\n\n{NO_CONTROL_SOCKET}\n{extra}'
    path.write_text(f"{tables}\n{cameras}")
    return path


def start_broker(run: Run, config: Path) -> Broker:
    run.broker = Broker(config, run.work.path / "broker.log", run.ssl_context)
    run.broker.wait_ready()
    common.progress(f"broker up on port {run.broker.port} (pid {run.broker.pid})")
    return run.broker


def start_cameras(run: Run, config: Path) -> Broker:
    """The broker with ``config``, then one replay publisher per camera, until the
    broker sees every camera online."""
    broker = start_broker(run, config)
    start_replays(run)
    broker.wait_online(run.camera_ids)
    return broker


def start_replays(run: Run, images: dict[str, str] | None = None) -> None:
    """One replay publisher per camera; ``images``: camera -> a photo it publishes
    instead of the test pattern."""
    a = run.args
    for cid in run.camera_ids:
        image = ["--image", images[cid]] if images and cid in images else []
        argv = [
            "-m",
            "benchmarks.replay",
            "--broker",
            run.endpoint,
            "--camera",
            cid,
            "--fps",
            str(a.fps),
            "--width",
            str(a.width),
            "--height",
            str(a.height),
            "--quality",
            str(a.quality),
            *image,
        ]
        run.replays.append(Child(f"replay {cid}", argv, run.work.path / f"replay-{cid}.log"))
    for child in run.replays:
        child.expect(timeout=60)  # pre-encoding done


def client_argv(
    port: int, name: str, cameras: Sequence[tuple[str, int]], options: Sequence[str] = ()
) -> list[str]:
    argv = ["-m", "benchmarks.client", "--port", str(port), "--name", name, *options]
    for cid, count in cameras:
        if count:
            argv += ["--camera", f"{cid}:{count}"]
    return argv


def start_clients(
    run: Run,
    per_camera: int | None = None,
    port: int | None = None,
    options: Sequence[str] = (),
    procs: int | None = None,
    tag: str = "",
) -> list[Child]:
    """``per_camera`` (default ``--clients``) connections to each camera, split over
    ``procs`` (default ``--client-procs``) client processes; ``port`` defaults to the
    broker's. Returns the new processes, also added to ``run.clients``."""
    per_camera = run.args.clients if per_camera is None else per_camera
    if port is None:  # the broker's: over TLS with --tls (else a plain ceiling sender)
        assert run.broker is not None
        port = run.broker.port
        if run.tls:
            options = [*options, "--tls", str(run.cert)]
    procs = max(
        1, min(run.args.client_procs if procs is None else procs, len(run.camera_ids) * per_camera)
    )
    started = []
    for p in range(procs):
        share = [(cid, len(range(p, per_camera, procs))) for cid in run.camera_ids]
        argv = client_argv(port, f"p{p}:", share, options)
        log = run.work.path / f"client{tag}-{p}.log"
        started.append(Child(f"client{tag} {p}", argv, log))
    for child in started:
        child.expect(timeout=120)  # every connection handshaken
    run.clients += started
    return started


def stop_clients(run: Run) -> None:
    for child in run.clients:
        child.stop()
    run.clients = []


def wait(seconds: float, label: str, on_tick: Callable[[], str] | None = None) -> None:
    """Sleep ``seconds``, printing a progress line (with ``on_tick()``) every second."""
    end = time.monotonic() + seconds
    tick = time.monotonic()
    while (left := end - time.monotonic()) > 0:
        tick += 1
        time.sleep(max(0.0, min(left, tick - time.monotonic())))
        elapsed = seconds - max(0.0, end - time.monotonic())
        extra = on_tick() if on_tick else ""
        common.progress(f"{label} {elapsed:4.0f}/{seconds:g} s {extra}")


def measure(run: Run, seconds: float | None = None, label: str = "measure") -> dict[str, Any]:
    """Count in every client and replay for ``seconds`` (default ``--duration``), sampling
    broker and load-generator CPU and broker RSS each second; the clients' and replays'
    summaries, broker figures and ``/healthz``. The clients exit after it; the replays
    keep publishing (their counters restart at the next ``start``)."""
    broker = run.broker
    assert broker is not None
    seconds = run.args.duration if seconds is None else seconds
    broker_cpu = common.CpuMeter([broker.pid])
    loadgen_cpu = common.CpuMeter([c.pid for c in run.replays + run.clients])
    for child in run.replays + run.clients:
        child.send("start")
    broker_cpu.start()
    loadgen_cpu.start()
    started = time.monotonic()
    peak_rss = 0

    def tick() -> str:
        nonlocal peak_rss
        cores, gen = broker_cpu.interval(), loadgen_cpu.interval()
        rss = common.rss_bytes(broker.pid) or 0
        peak_rss = max(peak_rss, rss)
        frames = sum(c.latest.get("frames", 0) for c in run.clients)
        run.samples.append(
            {
                "t": round(time.monotonic() - started, 2),
                "broker_cores": cores,
                "loadgen_cores": gen,
                "broker_rss_bytes": rss,
            }
        )
        return (
            f"broker {cores:.2f} cores {rss / 2**20:.0f} MiB | load generators "
            f"{gen:.2f} cores | frames received {frames}"
        )

    wait(seconds, label, tick)
    for child in run.clients + run.replays:
        child.send("stop")
    return {
        "broker_cores": broker_cpu.total(),
        "loadgen_cores": loadgen_cpu.total(),
        "broker_rss_bytes": common.rss_bytes(broker.pid),
        "broker_peak_rss_bytes": peak_rss,
        "replays": {cid: r.expect(10) for cid, r in zip(run.camera_ids, run.replays, strict=True)},
        "clients": [c.expect(30) for c in run.clients],
        "health": broker.get_json("/healthz"),
    }


def collect(
    args: argparse.Namespace, execute: Callable[[Run, float], Any]
) -> tuple[Run, Any, float, str]:
    """Run a scenario's ``execute`` in a fresh workspace, keeping the logs if it fails and
    stopping every process either way; returns the run, its raw result, warm-up and start."""
    warmup = common.QUICK_WARMUP if args.quick else common.WARMUP
    bench = Run(args, Workspace())
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        raw = execute(bench, warmup)
    except BaseException:
        common.progress(f"failed; logs kept in {bench.work.keep_logs(args.out)}")
        raise
    finally:
        shutdown(bench)
        bench.work.remove()
    return bench, raw, warmup, started


def shutdown(run: Run) -> None:
    for child in run.clients + run.replays:
        child.stop()
    if run.broker is not None:
        run.broker.stop()


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard
    limit); children inherit it. Returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_files_limit(pid: int) -> int | None:
    """The soft "Max open files" of a running process (from /proc/PID/limits)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return -1 if value == "unlimited" else int(value)
    except (OSError, IndexError, ValueError):
        pass
    return None
