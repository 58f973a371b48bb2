"""Scenario ``fanout``: C cameras x S WebSocket clients per camera.

The real broker (external-publisher cameras on an ipc:// endpoint), C replay publishers
and a few client processes sharing the C x S connections, all on this machine. After a
warm-up, a measured window: per client delivered fps, latency and drops; broker CPU and
RSS; the load generators' own CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.procs import Broker, Child, Workspace, get_json

TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
TARGET_DELIVERED = 0.99
TARGET_BROKER_CORES = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, default=8, help="cameras (default 8)")
    p.add_argument("--clients", type=int, default=8, help="WebSocket clients per camera (8)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--client-procs", type=int, default=2,
                   help="client processes sharing the connections (default 2)")  # fmt: skip


@dataclass
class Run:
    args: argparse.Namespace
    work: Workspace
    broker: Broker | None = None
    replays: list[Child] = field(default_factory=list)
    clients: list[Child] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def camera_ids(self) -> list[str]:
        return [f"cam{i}" for i in range(self.args.cameras)]

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.work.path / 'bench.ipc'}"


def write_config(run: Run) -> Path:
    a = run.args
    return write_broker_config(
        run.work.path, run.endpoint, run.camera_ids, a.width, a.height, a.fps
    )


def write_broker_config(
    directory: Path, endpoint: str, camera_ids: list[str],
    width: int = 1280, height: int = 720, fps: float = 15,
) -> Path:  # fmt: skip
    """A broker config for external publishers on ``endpoint``; returns its path."""
    cameras = "".join(
        f'[[cameras]]\nid = "{cid}"\nwidth = {width}\nheight = {height}\nfps = {fps}\n'
        for cid in camera_ids
    )
    path = directory / "broker.toml"
    path.write_text(f'[ingest]\nendpoints = ["{endpoint}"]\n[control]\nendpoints = []\n\n{cameras}')
    return path


def start_replays(run: Run) -> None:
    a = run.args
    for cid in run.camera_ids:
        argv = ["-m", "benchmarks.replay", "--broker", run.endpoint, "--camera", cid,
                "--fps", str(a.fps), "--width", str(a.width), "--height", str(a.height),
                "--quality", str(a.quality)]  # fmt: skip
        run.replays.append(Child(f"replay {cid}", argv, run.work.path / f"replay-{cid}.log"))
    for child in run.replays:
        child.expect(timeout=60)  # pre-encoding done


def start_clients(run: Run) -> None:
    assert run.broker is not None
    procs = max(1, min(run.args.client_procs, run.args.cameras * run.args.clients))
    for p in range(procs):
        argv = ["-m", "benchmarks.client", "--port", str(run.broker.port), "--name", f"p{p}:"]
        for cid in run.camera_ids:
            count = len(range(p, run.args.clients, procs))
            if count:
                argv += ["--camera", f"{cid}:{count}"]
        run.clients.append(Child(f"client {p}", argv, run.work.path / f"client-{p}.log"))
    for child in run.clients:
        child.expect(timeout=30)  # every connection handshaken


def wait(seconds: float, label: str, on_tick: Callable[[], str] | None = None) -> None:
    end = time.monotonic() + seconds
    tick = time.monotonic()
    while (left := end - time.monotonic()) > 0:
        tick += 1
        time.sleep(max(0.0, min(left, tick - time.monotonic())))
        elapsed = seconds - max(0.0, end - time.monotonic())
        extra = on_tick() if on_tick else ""
        common.progress(f"{label} {elapsed:4.0f}/{seconds:g} s {extra}")


def measure(run: Run) -> dict[str, object]:
    assert run.broker is not None
    broker_cpu = common.CpuMeter([run.broker.pid])
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
        rss = common.rss_bytes(run.broker.pid) or 0
        peak_rss = max(peak_rss, rss)
        frames = sum(c.latest.get("frames", 0) for c in run.clients)
        run.samples.append({"t": round(time.monotonic() - started, 2), "broker_cores": cores,
                            "loadgen_cores": gen, "broker_rss_bytes": rss})  # fmt: skip
        return (f"broker {cores:.2f} cores {rss / 2**20:.0f} MiB | load generators "
                f"{gen:.2f} cores | frames received {frames}")  # fmt: skip

    wait(run.args.duration, "measure", tick)
    for child in run.clients + run.replays:
        child.send("stop")
    return {
        "broker_cores": broker_cpu.total(),
        "loadgen_cores": loadgen_cpu.total(),
        "broker_rss_bytes": common.rss_bytes(run.broker.pid),
        "broker_peak_rss_bytes": peak_rss,
        "replays": {cid: r.expect(10) for cid, r in zip(run.camera_ids, run.replays, strict=True)},
        "clients": [c.expect(10) for c in run.clients],
        "health": get_json(run.broker.url + "/healthz"),
    }


def analyse(run: Run, raw: dict) -> dict[str, object]:
    connections = [conn for c in raw["clients"] for conn in c["connections"]]
    connections.sort(key=lambda conn: (run.camera_ids.index(conn["camera"]), conn["name"]))
    counters: dict[str, int] = {}
    all_latencies: list[float] = []
    for conn in connections:
        index = counters[conn["camera"]] = counters.get(conn["camera"], -1) + 1
        conn["name"] = f"{conn['camera']}/{index}"
        all_latencies += conn.pop("latencies_ms")
        span = conn["seq_span"]
        conn["delivered"] = round(conn["frames"] / span, 4) if span else 0.0
        conn["source_fps"] = raw["replays"][conn["camera"]]["fps"]
    overall = common.latency_summary_ms([v / 1000 for v in all_latencies])
    targets = {
        "p50_ms": {"limit": TARGET_P50_MS, "worst": _worst(connections, "p50_ms")},
        "p99_ms": {"limit": TARGET_P99_MS, "worst": _worst(connections, "p99_ms")},
        "delivered": {"limit": TARGET_DELIVERED,
                      "worst": min((c["delivered"] for c in connections), default=0.0)},
        "broker_cores": {"limit": TARGET_BROKER_CORES, "worst": raw["broker_cores"]},
    }  # fmt: skip
    for name, target in targets.items():
        worst, limit = target["worst"], target["limit"]
        ok = worst is not None and (worst >= limit if name == "delivered" else worst <= limit)
        target["met"] = bool(ok and len(connections) == run.args.cameras * run.args.clients)
    return {"connections": connections, "latency_all": overall, "targets": targets}


def _worst(connections: list[dict], key: str) -> float | None:
    values = [c[key] for c in connections if c[key] is not None]
    return max(values) if len(values) == len(connections) and values else None


def print_report(result: dict) -> None:
    rows = [
        [c["name"], c["frames"], c["fps"], c["delivered"] * 100, c["drops"], c["p50_ms"],
         c["p99_ms"], c["max_ms"], "closed" if c["closed"] else ""]
        for c in result["clients"]
    ]  # fmt: skip
    headers = ["client", "frames", "fps", "deliv%", "drops", "p50 ms", "p99 ms", "max ms", ""]
    print(common.format_table(headers, rows))
    b, lat = result["broker"], result["latency_all"]
    src = ", ".join(f"{cid} {r['fps']}" for cid, r in result["sources"].items())
    print(f"\nsource fps: {src}")
    print(f"all clients: latency p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
          f"max {lat['max_ms']} ms")  # fmt: skip
    print(f"broker: {b['cores']:.3f} cores, RSS {b['rss_bytes'] / 2**20:.1f} MiB "
          f"(peak {b['peak_rss_bytes'] / 2**20:.1f} MiB)")  # fmt: skip
    print(f"load generators (replays + clients): {result['loadgen']['cores']:.3f} cores")
    print("\ntargets:")
    for name, t in result["targets"].items():
        op = ">=" if name == "delivered" else "<="
        print(f"  {name:13s} worst {common._cell(t['worst']):>8}  {op} {t['limit']:<5g}  "
              f"{common.met(t['met'])}")  # fmt: skip


def chart(result: dict, path: Path) -> None:
    clients = result["clients"]
    names = [c["name"] for c in clients]
    x = list(range(len(clients)))
    fig, (fps_ax, lat_ax, cpu_ax) = common.new_figure(3, f"fanout {result['title']}")
    fps_ax.bar(x, [c["fps"] or 0 for c in clients], color="tab:blue")
    fps_ax.axhline(result["parameters"]["fps"], color="tab:red", ls="--", label="source fps")
    fps_ax.set_ylabel("delivered fps")
    fps_ax.legend(loc="lower right")
    for key, color in (("max_ms", "tab:gray"), ("p99_ms", "tab:orange"), ("p50_ms", "tab:blue")):
        lat_ax.bar(x, [c[key] or 0 for c in clients], color=color, label=key[:-3])
    lat_ax.axhline(TARGET_P99_MS, color="tab:orange", ls="--", lw=1)
    lat_ax.axhline(TARGET_P50_MS, color="tab:blue", ls="--", lw=1)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency ms")
    lat_ax.legend(loc="upper right")
    for ax in (fps_ax, lat_ax):
        ax.set_xticks(x, names, rotation=90, fontsize=6)
    samples = result["samples"]
    t = [s["t"] for s in samples]
    cpu_ax.plot(t, [s["broker_cores"] for s in samples], label="broker cores")
    cpu_ax.plot(t, [s["loadgen_cores"] for s in samples], label="load generator cores")
    cpu_ax.axhline(TARGET_BROKER_CORES, color="tab:red", ls="--", lw=1)
    cpu_ax.set_xlabel("s")
    cpu_ax.set_ylabel("cores")
    cpu_ax.legend(loc="upper left")
    rss_ax = cpu_ax.twinx()
    rss_ax.plot(t, [s["broker_rss_bytes"] / 2**20 for s in samples], color="tab:green")
    rss_ax.set_ylabel("broker RSS MiB", color="tab:green")
    common.save_figure(fig, path)


def collect(
    args: argparse.Namespace, execute: Callable[[Run, float], Any]
) -> tuple[Run, Any, float, str]:
    """Run a scenario's ``execute`` in a fresh workspace, keeping the logs if it fails and
    stopping every process either way; returns the run, its raw result, warm-up and start."""
    warmup = 1.0 if args.quick else 2.0
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


def run(args: argparse.Namespace) -> int:
    bench, raw, warmup, started = collect(args, execute)
    analysed = analyse(bench, raw)
    a = args
    result = {
        "scenario": "fanout",
        "started": started,
        "title": f"{a.cameras} cameras x {a.clients} clients, {a.width}x{a.height} "
        f"q{a.quality} {a.fps:g} fps, {a.duration:g} s",
        "parameters": {k: getattr(a, k) for k in
                       ("cameras", "clients", "width", "height", "fps", "quality",
                        "client_procs", "duration", "quick")} | {"warmup": warmup},
        "machine": common.machine_info(),
        "versions": common.versions(),
        "broker": {"cores": raw["broker_cores"], "rss_bytes": raw["broker_rss_bytes"],
                   "peak_rss_bytes": raw["broker_peak_rss_bytes"], "health": raw["health"]},
        "loadgen": {"cores": raw["loadgen_cores"]},
        "sources": raw["replays"],
        "clients": analysed["connections"],
        "latency_all": analysed["latency_all"],
        "targets": analysed["targets"],
        "samples": bench.samples,
    }  # fmt: skip
    return common.report(result, args.out, "fanout", started, print_report, chart)


def execute(run: Run, warmup: float) -> dict:
    a = run.args
    common.progress(f"fanout: {a.cameras} cameras x {a.clients} clients, {a.width}x{a.height} "
                    f"q{a.quality} at {a.fps:g} fps; warm-up {warmup:g} s, "
                    f"measure {a.duration:g} s")  # fmt: skip
    run.broker = Broker(write_config(run), run.work.path / "broker.log")
    run.broker.wait_ready()
    common.progress(f"broker up on port {run.broker.port} (pid {run.broker.pid})")
    start_replays(run)
    run.broker.wait_online(run.camera_ids)
    common.progress(f"{len(run.replays)} replay publishers online")
    start_clients(run)
    common.progress(f"{a.cameras * a.clients} connections in {len(run.clients)} processes")
    wait(warmup, "warm-up")
    return measure(run)


def shutdown(run: Run) -> None:
    for child in run.clients + run.replays:
        child.stop()
    if run.broker is not None:
        run.broker.stop()
