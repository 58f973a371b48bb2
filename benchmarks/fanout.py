"""Scenario ``fanout``: C cameras x S WebSocket clients per camera.

The real broker (external-publisher cameras on an ipc:// endpoint), C replay publishers
and a few client processes sharing the C x S connections, all on this machine. After a
warm-up, a measured window: per client delivered fps, latency and drops; broker CPU and
RSS; the load generators' own CPU. (``mjpeg`` is the same over HTTP MJPEG: `run_fanout`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import (
    Run,
    collect,
    measure,
    start_cameras,
    start_clients,
    wait,
    write_config,
)

TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
TARGET_DELIVERED = 0.99
TARGET_BROKER_CORES = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, help="cameras (default 8; --quick 2)")
    p.add_argument("--clients", type=int, help="clients per camera (default 8; --quick 2)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="client processes sharing the connections (default 2)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="the broker serves https/wss (a self-signed certificate); clients verify it",
    )


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
    complete = len(connections) == run.args.cameras * run.args.clients  # all reported
    p50, p99 = _worst(connections, "p50_ms"), _worst(connections, "p99_ms")
    delivered = min((c["delivered"] for c in connections), default=0.0)
    cores = raw["broker_cores"]
    targets = {
        "p50_ms": common.target(TARGET_P50_MS, p50, at_least=False, key="worst", complete=complete),
        "p99_ms": common.target(TARGET_P99_MS, p99, at_least=False, key="worst", complete=complete),
        "delivered": common.target(
            TARGET_DELIVERED, delivered, at_least=True, key="worst", complete=complete
        ),
        "broker_cores": common.target(
            TARGET_BROKER_CORES, cores, at_least=False, key="worst", complete=complete
        ),
    }
    return {"connections": connections, "latency_all": overall, "targets": targets}


def _worst(connections: list[dict], key: str) -> float | None:
    values = [c[key] for c in connections if c[key] is not None]
    return max(values) if len(values) == len(connections) and values else None


def print_report(result: dict) -> None:
    rows = [
        [
            c["name"],
            c["frames"],
            c["fps"],
            c["delivered"] * 100,
            c["drops"],
            c["p50_ms"],
            c["p99_ms"],
            c["max_ms"],
            "closed" if c["closed"] else "",
        ]
        for c in result["clients"]
    ]
    headers = ["client", "frames", "fps", "deliv%", "drops", "p50 ms", "p99 ms", "max ms", ""]
    print(common.format_table(headers, rows))
    b, lat = result["broker"], result["latency_all"]
    src = ", ".join(f"{cid} {r['fps']}" for cid, r in result["sources"].items())
    print(f"\nsource fps: {src}")
    print(
        f"all clients: latency p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
        f"max {lat['max_ms']} ms"
    )
    print(
        f"broker: {b['cores']:.3f} cores, RSS {b['rss_bytes'] / 2**20:.1f} MiB "
        f"(peak {b['peak_rss_bytes'] / 2**20:.1f} MiB)"
    )
    print(f"load generators (replays + clients): {result['loadgen']['cores']:.3f} cores")
    print("\ntargets:")
    for name, t in result["targets"].items():
        op = ">=" if name == "delivered" else "<="
        print(
            f"  {name:13s} worst {common._cell(t['worst']):>8}  {op} {t['limit']:<5g}  "
            f"{common.met(t['met'])}"
        )


def chart(result: dict, path: Path) -> None:
    clients = result["clients"]
    names = [c["name"] for c in clients]
    x = list(range(len(clients)))
    fig, (fps_ax, lat_ax, cpu_ax) = common.new_figure(3, f"{result['scenario']} {result['title']}")
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


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets as rows of the suite's summary (``python -m benchmarks all``)."""
    t, b = result["targets"], result["broker"]
    lat = result["latency_all"]
    return [
        {
            "target": f"every client p50 <= {TARGET_P50_MS:g} ms",
            "measured": f"worst {common._cell(t['p50_ms']['worst'])} ms (all {lat['p50_ms']} ms)",
            "met": t["p50_ms"]["met"],
        },
        {
            "target": f"every client p99 <= {TARGET_P99_MS:g} ms",
            "measured": f"worst {common._cell(t['p99_ms']['worst'])} ms (all {lat['p99_ms']} ms)",
            "met": t["p99_ms"]["met"],
        },
        {
            "target": f"every client >= {TARGET_DELIVERED:.0%} of the source rate",
            "measured": f"worst {t['delivered']['worst']:.2%}",
            "met": t["delivered"]["met"],
        },
        {
            "target": f"broker < {TARGET_BROKER_CORES:g} core",
            "measured": f"{b['cores']:.3f} cores, RSS {b['rss_bytes'] / 2**20:.0f} MiB; load "
            f"generators {result['loadgen']['cores']:.2f} cores",
            "met": t["broker_cores"]["met"],
        },
    ]


def run(args: argparse.Namespace) -> int:
    return run_fanout(args, "fanout", "websocket")


def run_fanout(args: argparse.Namespace, scenario: str, protocol: str) -> int:
    """The fanout measurement with clients of ``protocol`` (websocket or mjpeg)."""

    if args.cameras is None:
        args.cameras = 2 if args.quick else 8
    if args.clients is None:
        args.clients = 2 if args.quick else 8

    over = " over TLS" if args.tls else ""

    def execute(run: Run, warmup: float) -> dict:
        a = run.args
        common.progress(
            f"{scenario}: {a.cameras} cameras x {a.clients} {protocol} clients{over}, "
            f"{a.width}x{a.height} q{a.quality} at {a.fps:g} fps; warm-up "
            f"{warmup:g} s, measure {a.duration:g} s"
        )
        start_cameras(run, write_config(run))
        common.progress(f"{len(run.replays)} replay publishers online")
        start_clients(run, options=["--protocol", protocol])
        common.progress(f"{a.cameras * a.clients} connections in {len(run.clients)} processes")
        wait(warmup, "warm-up")
        return measure(run)

    bench, raw, warmup, started = collect(args, execute)
    analysed = analyse(bench, raw)
    a = args
    result = {
        **common.result_head(
            scenario,
            started,
            f"{a.cameras} cameras x {a.clients} {protocol} clients{over}, {a.width}x{a.height} "
            f"q{a.quality} {a.fps:g} fps, {a.duration:g} s",
            a,
            (
                "cameras",
                "clients",
                "width",
                "height",
                "fps",
                "quality",
                "client_procs",
                "duration",
                "quick",
                "tls",
            ),
            warmup=warmup,
            protocol=protocol,
        ),
        "broker": {
            "cores": raw["broker_cores"],
            "rss_bytes": raw["broker_rss_bytes"],
            "peak_rss_bytes": raw["broker_peak_rss_bytes"],
            "health": raw["health"],
        },
        "loadgen": {"cores": raw["loadgen_cores"]},
        "sources": raw["replays"],
        "clients": analysed["connections"],
        "latency_all": analysed["latency_all"],
        "targets": analysed["targets"],
        "samples": bench.samples,
    }
    return common.report(result, args.out, scenario, started, print_report, chart)
