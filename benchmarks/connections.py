"""Scenario ``connections``: many concurrent viewers at 1 fps each; the broker's memory per
connection and its CPU.

One broker and C replay publishers. First a baseline window with no viewer; then the
connection count is raised step by step (``--steps``, totals) by starting more client
processes (each holds up to ``--per-proc`` WebSocket connections with ``?fps=1``, the
broker's per-client rate cap), keeping the earlier ones open. After each step's settling
time, a measured window: broker CPU and RSS each second, then every client reports its
connections' frames and latency. RSS per connection = (broker RSS - baseline RSS) / K.
The benchmark raises its own open-files limit (inherited by the broker and the clients)
and records the broker's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import (
    Run,
    client_argv,
    collect,
    open_files_limit,
    raise_open_files,
    start_cameras,
    wait,
    write_config,
)
from benchmarks.procs import Child, get_json

SCENARIO = "connections"
TARGET_CONNECTIONS = 5000
TARGET_BYTES_PER_CONNECTION = 40_000  # 40 KB
DEFAULT_SECONDS = 10.0  # per step (--duration)
FD_MARGIN = 1024  # descriptors beyond one per connection (logs, pipes, ZeroMQ, listeners)
CONNECT_SECONDS, CONNECT_SECONDS_EACH = 30.0, 0.05  # to open a step's new connections


def totals(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected rising totals like 100,1000, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cameras", type=int, help="cameras the viewers spread over (default 2; --quick 1)"
    )
    p.add_argument(
        "--steps",
        type=totals,
        metavar="K,K,...",
        help="concurrent connections at each step (default "
        "500,1000,2000,3000,4000,5000; --quick 50,200)",
    )
    p.add_argument(
        "--client-fps",
        type=float,
        default=1.0,
        help="each viewer's rate cap, ?fps= on its URL (default 1)",
    )
    p.add_argument(
        "--per-proc", type=int, default=1250, help="connections per client process (default 1250)"
    )
    p.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="wait after each step's connections are open (default 3; --quick 0.5)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=640,
        help="camera frame width (default 640: this scenario measures connections; "
        "saturation measures bandwidth)",
    )
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=15.0, help="source fps (default 15)")
    p.add_argument("--quality", type=int, default=80)


def _defaults(a: argparse.Namespace) -> None:
    if a.cameras is None:
        a.cameras = 1 if a.quick else 2
    if a.steps is None:
        a.steps = [50, 200] if a.quick else [500, 1000, 2000, 3000, 4000, 5000]
    if a.settle is None:
        a.settle = common.QUICK_WARMUP if a.quick else 3.0


# --- the run -------------------------------------------------------------------------


def add_clients(run: Run, count: int, first: int) -> list[Child]:
    """``count`` more connections, spread over the cameras, ``--per-proc`` per process."""
    a = run.args
    started: list[Child] = []
    assert run.broker is not None
    for offset in range(0, count, a.per_proc):
        n = min(a.per_proc, count - offset)
        ids = run.camera_ids
        share = [
            (cid, len(range((first + offset + i) % len(ids), n, len(ids))))
            for i, cid in enumerate(ids)
        ]
        index = len(run.clients) + len(started)
        argv = client_argv(
            run.broker.port, f"p{index}:", share, ["--query", f"fps={a.client_fps:g}"]
        )
        started.append(Child(f"client {index}", argv, run.work.path / f"client-{index}.log"))
    run.clients += started  # stopped with the rest, whatever happens
    deadline = time.monotonic() + CONNECT_SECONDS + count * CONNECT_SECONDS_EACH
    for child in started:
        child.expect(timeout=max(1.0, deadline - time.monotonic()))  # all handshaken
    return started


def window(run: Run, label: str) -> dict[str, Any]:
    """One measured window: broker CPU and RSS per second, then every client's lap."""
    assert run.broker is not None
    pid = run.broker.pid
    broker_cpu = common.CpuMeter([pid])
    clients_cpu = common.CpuMeter([c.pid for c in run.clients])
    replays_cpu = common.CpuMeter([r.pid for r in run.replays])
    for child in run.clients:
        child.send("start")
    for meter in (broker_cpu, clients_cpu, replays_cpu):
        meter.start()
    rss: list[int] = []
    started = time.monotonic()

    def tick() -> str:
        cores, client_cores = broker_cpu.interval(), clients_cpu.interval()
        replays_cpu.interval()
        rss.append(common.rss_bytes(pid) or 0)
        run.samples.append(
            {
                "step": label,
                "t": round(time.monotonic() - started, 2),
                "broker_cores": cores,
                "client_cores": client_cores,
                "broker_rss_bytes": rss[-1],
            }
        )
        frames = sum(c.latest.get("frames", 0) for c in run.clients)
        return (
            f"| broker {cores:.2f} cores {rss[-1] / 2**20:.1f} MiB | clients "
            f"{client_cores:.2f} cores | frames {frames}"
        )

    wait(run.args.duration, label, tick)
    for child in run.clients:
        child.send("lap")
    laps = [c.expect(60) for c in run.clients]
    return {
        "broker_cores": round(broker_cpu.total(), 4),
        "client_cores": round(clients_cpu.total(), 4),
        "replay_cores": round(replays_cpu.total(), 4),
        "rss_bytes": rss[-1] if rss else common.rss_bytes(pid),
        "rss_mean_bytes": round(statistics.fmean(rss)) if rss else None,
        "laps": laps,
    }


def execute(run: Run, warmup: float) -> dict:
    a = run.args
    limits = raise_open_files(max(a.steps) + FD_MARGIN)
    common.progress(
        f"{SCENARIO}: {a.steps} connections at {a.client_fps:g} fps over "
        f"{a.cameras} cameras ({a.width}x{a.height} q{a.quality} {a.fps:g} fps); "
        f"open-files limit {limits[0]}; per step {a.settle:g} + "
        f"{a.duration:g} s"
    )
    broker = start_cameras(run, write_config(run))
    broker_limit = open_files_limit(broker.pid)
    wait(warmup if a.quick else max(warmup, 3.0), "baseline warm-up")
    baseline = window(run, "baseline (no viewers)")
    common.progress(
        f"baseline: broker {baseline['broker_cores']:.3f} cores, RSS "
        f"{baseline['rss_bytes'] / 2**20:.1f} MiB"
    )
    steps_done, opened, unopened = [], 0, None
    for total in a.steps:
        t0 = time.monotonic()
        try:
            add_clients(run, total - opened, opened)
        except RuntimeError as exc:  # the broker could not take them in time: stop here
            seconds = round(time.monotonic() - t0, 1)
            common.progress(
                f"{total} connections: the new ones did not all open within "
                f"{seconds:g} s; the ramp stops"
            )
            unopened = {"connections": total, "seconds": seconds, "error": str(exc)[:500]}
            break
        connect_s = time.monotonic() - t0
        common.progress(
            f"{total} connections open in {len(run.clients)} client processes "
            f"({total - opened} new in {connect_s:.1f} s)"
        )
        wait(a.settle, f"{total} settle")
        measured = window(run, f"{total} connections")
        health = get_json(broker.url + "/healthz", timeout=30)
        measured.update(
            connections=total,
            connect_seconds=round(connect_s, 2),
            sockstat=common.sockstat(),
            slow_client_disconnects=health.get("slow_client_disconnects"),
        )
        steps_done.append(measured)
        opened = total
    return {
        "baseline": baseline,
        "steps": steps_done,
        "unopened": unopened,
        "broker_open_files": broker_limit,
        "own_open_files": limits[0],
    }


# --- analysis ------------------------------------------------------------------------


def summarise(run: Run, raw: dict) -> dict[str, Any]:
    a = run.args
    base = raw["baseline"]
    rows, previous = [], (0, base["rss_bytes"])
    for step in raw["steps"]:
        connections = [conn for lap in step.pop("laps") for conn in lap["connections"]]
        latencies = [v / 1000 for conn in connections for v in conn.pop("latencies_ms")]
        fps = sorted(conn["fps"] or 0.0 for conn in connections)
        k = step["connections"]
        delta = step["rss_bytes"] - base["rss_bytes"]
        added = k - previous[0]
        marginal = (step["rss_bytes"] - previous[1]) / added if added > 0 else None
        previous = (k, step["rss_bytes"])
        rows.append(
            {
                "connections": k,
                "reported": len(connections),
                "closed": sum(conn["closed"] for conn in connections),
                "receiving": sum(1 for conn in connections if conn["frames"]),
                "fps_min": fps[0] if fps else None,
                "fps_median": statistics.median(fps) if fps else None,
                "fps_total": round(sum(fps), 1),
                "egress_mb_s": round(
                    sum(conn["bytes"] for conn in connections) / max(1e-9, a.duration) / 1e6, 2
                ),
                "latency": common.latency_summary_ms(latencies),
                "broker_cores": step["broker_cores"],
                "client_cores": step["client_cores"],
                "replay_cores": step["replay_cores"],
                "rss_bytes": step["rss_bytes"],
                "rss_mean_bytes": step["rss_mean_bytes"],
                "rss_delta_bytes": delta,
                "rss_per_connection_bytes": round(delta / k),
                "marginal_rss_per_connection_bytes": None if marginal is None else round(marginal),
                "connect_seconds": step["connect_seconds"],
                "slow_client_disconnects": step["slow_client_disconnects"],
                "sockstat": step["sockstat"],
            }
        )
    return {"baseline": {k: v for k, v in base.items() if k != "laps"}, "steps": rows}


def targets(a: argparse.Namespace, steps: list[dict]) -> dict[str, dict]:
    last = steps[-1] if steps else None
    reached = last is not None and last["connections"] >= TARGET_CONNECTIONS
    alive = last is not None and last["reported"] == last["connections"] and not last["closed"]
    count = last["connections"] - last["closed"] if last else 0
    if last is not None and last["reported"] != last["connections"]:
        count = last["reported"] - last["closed"]
    per_conn = last["rss_per_connection_bytes"] if last else None
    # Reached and alive, ``count`` is every connection asked for: at least the target.
    return {
        "connections": common.target(
            TARGET_CONNECTIONS, count, at_least=True, op=True, complete=reached and alive
        ),
        "rss_per_connection_bytes": common.target(
            TARGET_BYTES_PER_CONNECTION,
            per_conn,
            at_least=False,
            op=True,
            complete=reached and alive,
        ),
    }


# --- output --------------------------------------------------------------------------


def print_report(result: dict) -> None:
    base = result["baseline"]
    rows = [
        [
            "0",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            base["broker_cores"],
            "-",
            base["rss_bytes"] / 2**20,
            "-",
            "-",
            "-",
        ]
    ]
    for s in result["steps"]:
        lat = s["latency"]
        marginal = s["marginal_rss_per_connection_bytes"]
        rows.append(
            [
                s["connections"],
                s["reported"] - s["closed"],
                s["fps_median"],
                s["fps_min"],
                s["egress_mb_s"],
                lat["p50_ms"],
                lat["p99_ms"],
                s["broker_cores"],
                s["client_cores"],
                s["rss_bytes"] / 2**20,
                s["rss_delta_bytes"] / 2**20,
                s["rss_per_connection_bytes"] / 1000,
                None if marginal is None else marginal / 1000,
            ]
        )
    headers = [
        "K",
        "open",
        "fps med",
        "fps min",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "broker cores",
        "client cores",
        "RSS MiB",
        "delta MiB",
        "KB/conn",
        "marginal KB/conn",
    ]
    print(common.format_table(headers, rows))
    p = result["parameters"]
    print(
        f"\nviewers at {p['client_fps']:g} fps (?fps=) on {p['cameras']} cameras, "
        f"{p['width']}x{p['height']} q{p['quality']} at {p['fps']:g} fps; KB = 1000 bytes; "
        f"KB/conn = (RSS - baseline) / K; marginal = RSS growth / connections added"
    )
    print(
        f"open-files limit: this process {result['own_open_files']}, broker "
        f"{result['broker_open_files']}"
    )
    if result["unopened"]:
        u = result["unopened"]
        print(
            f"step {u['connections']}: the new connections did not all open within "
            f"{u['seconds']:g} s (the broker did not answer their handshakes in time); "
            f"the ramp stopped there"
        )
    print("\ntargets:")
    for name, t in result["targets"].items():
        print(
            f"  {name:25s} {common._cell(t['value']):>8}  {t['op']} {t['limit']:<6g}  "
            f"{common.met(t['met'])}"
        )


def chart(result: dict, path: Path) -> None:
    fig, (mem_ax, cpu_ax) = common.new_figure(2, f"{SCENARIO} {result['title']}")
    steps = result["steps"]
    x = [0] + [s["connections"] for s in steps]
    rss = [result["baseline"]["rss_bytes"] / 2**20] + [s["rss_bytes"] / 2**20 for s in steps]
    mem_ax.plot(x, rss, "o-", label="broker RSS MiB")
    limit = [rss[0] + k * TARGET_BYTES_PER_CONNECTION / 2**20 for k in x]
    mem_ax.plot(x, limit, "--", color="tab:red", label="baseline + 40 KB per connection")
    mem_ax.set_ylabel("MiB")
    mem_ax.legend(loc="upper left")
    per = mem_ax.twinx()
    per.plot(
        x[1:],
        [s["rss_per_connection_bytes"] / 1000 for s in steps],
        "s:",
        color="tab:green",
        label="KB per connection",
    )
    per.set_ylabel("KB per connection", color="tab:green")
    per.set_ylim(bottom=0)
    cpu_ax.plot(
        x,
        [result["baseline"]["broker_cores"]] + [s["broker_cores"] for s in steps],
        "o-",
        label="broker cores",
    )
    cpu_ax.plot(x[1:], [s["client_cores"] for s in steps], "o:", label="client processes cores")
    cpu_ax.set_xlabel("concurrent connections")
    cpu_ax.set_ylabel("cores")
    cpu_ax.legend(loc="upper left")
    fps_ax = cpu_ax.twinx()
    fps_ax.plot(x[1:], [s["fps_total"] for s in steps], "^-", color="tab:purple")
    fps_ax.set_ylabel("frames/s delivered (all viewers)", color="tab:purple")
    common.save_figure(fig, path)


def headline(result: dict) -> list[dict]:
    """The targets as rows of the suite's summary (``python -m benchmarks all``)."""
    t = result["targets"]
    last = result["steps"][-1] if result["steps"] else None
    cores = f", broker {last['broker_cores']:.2f} cores" if last else ""
    per = t["rss_per_connection_bytes"]["value"]
    return [
        {
            "target": f"{TARGET_CONNECTIONS:,} concurrent clients at 1 fps",
            "measured": f"{t['connections']['value']} open{cores}",
            "met": t["connections"]["met"],
        },
        {
            "target": f"<= {TARGET_BYTES_PER_CONNECTION // 1000} KB broker RSS per connection",
            "measured": "-" if per is None else f"{per / 1000:.1f} KB",
            "met": t["rss_per_connection_bytes"]["met"],
        },
    ]


def run(args: argparse.Namespace) -> int:
    _defaults(args)
    bench, raw, warmup, started = collect(args, execute)
    summary = summarise(bench, raw)
    a = args
    result = {
        **common.result_head(
            SCENARIO,
            started,
            f"up to {max(a.steps)} viewers at {a.client_fps:g} fps, {a.cameras} cameras "
            f"{a.width}x{a.height} q{a.quality} {a.fps:g} fps, {a.duration:g} s per step",
            a,
            (
                "cameras",
                "steps",
                "client_fps",
                "per_proc",
                "settle",
                "width",
                "height",
                "fps",
                "quality",
                "duration",
                "quick",
            ),
            warmup=warmup,
        ),
        "own_open_files": raw["own_open_files"],
        "broker_open_files": raw["broker_open_files"],
        "baseline": summary["baseline"],
        "steps": summary["steps"],
        "unopened": raw["unopened"],
        "targets": targets(a, summary["steps"]),
        "samples": bench.samples,
    }
    return common.report(result, args.out, SCENARIO, started, print_report, chart)
