"""Scenario ``4k``: one 3840x2160 camera at 30 fps in lz4, bmp and jpeg, to 1, 4 and 16
WebSocket viewers.

Per format, a real broker supervises a real ``camera-worker --source test-pattern`` at
4K; after a warm-up, for each viewer count, one client process (`benchmarks.client`)
counts for ``--duration`` seconds. Measured: the worker's CPU per frame (/proc, over the
frames the broker received) and its ratio to the bare draw + encode of the same frames
in a child (``python -m benchmarks.fourk bare``), the broker's CPU and RSS (peak over
the window), the delivered fps per viewer against the rate the broker received, and the
latency from capture to the last byte received, p50/p99: for jpeg from the frame's COM
stamp on ``/cameras/cam``; for lz4 and bmp, which carry no stamp, from the
``captured_at`` of the frame header on ``/ws`` (the same payload, shared the same way,
plus a JSON header of about 120 bytes; ``--protocol mux`` of the client).

Retention is capped at ``--retention-bytes`` (default 64 MiB): at 17-25 MB a frame the
default 256 MiB would be most of the broker's memory (docs/protocol.md, "Formats").
Targets (issue 12): lz4 to 4 viewers at >= 99% of the source rate, p99 <= 100 ms, broker
RSS <= 300 MB. The machine is shared: the load average is recorded before and after.

    python -m benchmarks 4k
    python -m benchmarks 4k --formats lz4 --viewers 4 --duration 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import wait
from benchmarks.procs import Broker, Child, Workspace, get_json

DEFAULT_SECONDS = 10.0
FORMATS = ("lz4", "bmp", "jpeg")
VIEWERS = (1, 4, 16)
TARGET_SHARE, TARGET_P99_MS, TARGET_RSS = 0.99, 100.0, 300 * 1000 * 1000
BARE_FRAMES = 30


def listed(kind: type) -> Any:
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item]

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", type=listed(str), default=list(FORMATS), help="lz4,bmp,jpeg")
    p.add_argument("--viewers", type=listed(int), default=list(VIEWERS), help="1,4,16")
    p.add_argument("--width", type=int, default=3840)
    p.add_argument("--height", type=int, default=2160)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--retention-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument(
        "--queue-depth",
        type=int,
        default=2,
        help="server.queue_depth, frames queued per viewer (default 2, the broker's)",
    )


# --- child: the bare draw + encode -----------------------------------------------------


def bare(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--format", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--frames", type=int, default=BARE_FRAMES)
    args = p.parse_args(argv)
    from cameras.encoding import encode
    from cameras.sources.testpattern import TestPattern

    pattern = TestPattern(args.width, args.height)
    draw_s = encode_s = 0.0
    size = 0
    for seq in range(-3, args.frames):
        t0 = time.process_time()
        image = pattern.draw(max(seq, 0))
        t1 = time.process_time()
        data = encode(image, args.format, args.quality)
        t2 = time.process_time()
        if seq >= 0:
            draw_s, encode_s, size = draw_s + t1 - t0, encode_s + t2 - t1, size + len(data)
    n = args.frames
    print(
        json.dumps(
            {
                "draw_ms": round(draw_s / n * 1000, 2),
                "encode_ms": round(encode_s / n * 1000, 2),
                "pipeline_ms": round((draw_s + encode_s) / n * 1000, 2),
                "frame_bytes": size // n,
            }
        ),
        flush=True,
    )
    return 0


# --- the scenario ----------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def config_text(a: argparse.Namespace, fmt: str) -> str:
    return (
        f"[server]\nqueue_depth = {a.queue_depth}\n"
        "[ingest]\nendpoints = []\n[control]\nendpoints = []\n"
        f"[retention]\nmax_bytes = {a.retention_bytes}\n"
        f'[[cameras]]\nid = "cam"\nsource = "test-pattern"\nwidth = {a.width}\n'
        f'height = {a.height}\nfps = {a.fps:g}\nformat = "{fmt}"\nquality = {a.quality}\n'
    )


def frames_received(broker: Broker) -> int:
    cameras = get_json(broker.url + "/api/cameras")
    assert isinstance(cameras, list)
    return int(cameras[0]["frames_received"])


def measure_format(a: argparse.Namespace, work: Workspace, fmt: str) -> dict[str, Any]:
    label = f"{fmt} {a.width}x{a.height}"
    bare_child = Child(
        f"bare {label}",
        [
            "-m",
            "benchmarks.fourk",
            "bare",
            "--format",
            fmt,
            "--width",
            str(a.width),
            "--height",
            str(a.height),
            "--quality",
            str(a.quality),
            "--frames",
            str(5 if a.quick else BARE_FRAMES),
        ],
        work.path / f"bare-{fmt}.log",
    )
    try:
        bare_result = bare_child.expect(timeout=300)
    finally:
        bare_child.stop()
    common.progress(f"{label}: bare draw + encode {bare_result}")
    config = work.path / f"4k-{fmt}.toml"
    config.write_text(config_text(a, fmt))
    broker = Broker(config, work.path / f"broker-{fmt}.log")
    steps = []
    try:
        broker.wait_ready()
        broker.wait_online(["cam"], timeout=60)
        workers = children_of(broker.pid)
        wait(common.QUICK_WARMUP if a.quick else common.WARMUP, f"{label} warm-up")
        protocol = "websocket" if fmt == "jpeg" else "mux"
        for viewers in a.viewers:
            argv = [
                "-m",
                "benchmarks.client",
                "--port",
                str(broker.port),
                "--camera",
                f"cam:{viewers}",
                "--protocol",
                protocol,
                "--brief",
            ]
            client = Child(f"client {label} x{viewers}", argv, work.path / f"client-{fmt}.log")
            try:
                client.expect(timeout=60)
                time.sleep(1.0)  # the connections settle
                broker_cpu = common.CpuMeter([broker.pid])
                worker_cpu = common.CpuMeter(workers)
                client_cpu = common.CpuMeter([client.pid])
                before = frames_received(broker)
                peak_rss = 0
                for meter in (broker_cpu, worker_cpu, client_cpu):
                    meter.start()
                client.send("start")

                def tick(meter: common.CpuMeter = broker_cpu) -> str:
                    nonlocal peak_rss
                    rss = common.rss_bytes(broker.pid) or 0
                    peak_rss = max(peak_rss, rss)
                    return f"| broker {meter.interval():.2f} cores {rss / 1e6:.0f} MB"

                wait(a.duration, f"{label} x{viewers}", tick)
                client.send("stop")
                for meter in (broker_cpu, worker_cpu, client_cpu):
                    meter.interval()
                received = frames_received(broker) - before
                summary = client.expect(timeout=30)
            finally:
                client.stop()
            seconds = summary["seconds"] or a.duration
            source_fps = received / seconds
            conns = summary["connections"]
            fps = [c["fps"] or 0.0 for c in conns]
            worker_s = worker_cpu.total() * (worker_cpu.last_wall - worker_cpu.started_wall)
            step = {
                "viewers": viewers,
                "protocol": protocol,
                "source_fps": round(source_fps, 2),
                "viewer_fps_min": round(min(fps), 2),
                "viewer_fps_mean": round(sum(fps) / len(fps), 2),
                "share_min": round(min(fps) / source_fps, 4) if source_fps else None,
                "p50_ms": max((c["p50_ms"] or 0) for c in conns),
                "p99_ms": max((c["p99_ms"] or 0) for c in conns),
                "unstamped": sum(c["unstamped"] for c in conns),
                "broker_cores": round(broker_cpu.total(), 3),
                "broker_peak_rss_bytes": peak_rss,
                "worker_cores": round(worker_cpu.total(), 3),
                "worker_cpu_ms_per_frame": round(worker_s / received * 1000, 2)
                if received
                else None,
                "client_cores": round(client_cpu.total(), 3),
                "load_average": common.load_average(),
            }
            step["ratio_to_bare"] = (
                round(step["worker_cpu_ms_per_frame"] / bare_result["pipeline_ms"], 3)
                if step["worker_cpu_ms_per_frame"]
                else None
            )
            common.progress(f"{label} x{viewers}: {step}")
            steps.append(step)
        health = get_json(broker.url + "/healthz")
    finally:
        broker.stop()
    return {"format": fmt, "bare": bare_result, "steps": steps, "health": health}


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r["format"] != "lz4":
            continue
        for step in r["steps"]:
            if step["viewers"] != 4:
                continue
            share, p99, rss = step["share_min"], step["p99_ms"], step["broker_peak_rss_bytes"]
            rows.append(
                {
                    "target": "lz4 4K to 4 viewers: >= 99% of the source rate, p99 <= 100 ms, "
                    "broker RSS <= 300 MB",
                    "measured": f"{share:.1%} of {step['source_fps']} fps, p99 {p99} ms, "
                    f"RSS {rss / 1e6:.0f} MB",
                    "met": bool(
                        share is not None
                        and share >= TARGET_SHARE
                        and p99 <= TARGET_P99_MS
                        and rss <= TARGET_RSS
                    ),
                }
            )
    return rows


def headline(result: dict) -> list[dict]:
    return result["targets"]


def print_report(result: dict[str, Any]) -> None:
    rows = []
    for r in result["results"]:
        for s in r["steps"]:
            rows.append(
                [
                    r["format"],
                    s["viewers"],
                    s["source_fps"],
                    s["viewer_fps_min"],
                    s["share_min"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["broker_cores"],
                    round(s["broker_peak_rss_bytes"] / 1e6),
                    s["worker_cpu_ms_per_frame"],
                    r["bare"]["pipeline_ms"],
                    s["ratio_to_bare"],
                    s["load_average"][0],
                ]
            )
    headers = [
        "format",
        "viewers",
        "source fps",
        "viewer fps min",
        "share",
        "p50 ms",
        "p99 ms",
        "broker cores",
        "broker RSS MB",
        "worker ms/f",
        "bare ms/f",
        "ratio",
        "load 1m",
    ]
    print(common.format_table(headers, rows))
    print("\ntargets:")
    for t in result["targets"]:
        print(f"  {common.met(t['met'])} {t['target']}: {t['measured']}")


def chart(result: dict[str, Any], path: Path) -> None:
    fig, axes = common.new_figure(2, result["title"])
    for r in result["results"]:
        viewers = [s["viewers"] for s in r["steps"]]
        axes[0].plot(
            viewers, [s["viewer_fps_min"] for s in r["steps"]], marker="o", label=r["format"]
        )
        axes[1].plot(viewers, [s["p99_ms"] for s in r["steps"]], marker="o", label=r["format"])
    axes[0].set_ylabel("delivered fps (slowest viewer)")
    axes[1].set_ylabel("latency p99 (ms)")
    axes[1].set_xlabel("viewers")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.legend()
    common.save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    a = args
    started = time.strftime("%Y%m%d-%H%M%S")
    work = Workspace()
    load_before = common.load_average()
    results = []
    try:
        for fmt in a.formats:
            results.append(measure_format(a, work, fmt))
    finally:
        work.keep_logs(a.out)
        work.remove()
    result = {
        **common.result_head(
            "4k",
            started,
            f"one {a.width}x{a.height} camera at {a.fps:g} fps: {', '.join(a.formats)} to "
            f"{', '.join(map(str, a.viewers))} viewers, {a.duration:g} s each",
            a,
            ("formats", "viewers", "width", "height", "fps", "quality", "duration", "quick"),
            retention_bytes=a.retention_bytes,
            queue_depth=a.queue_depth,
            load_average_before=load_before,
            load_average_after=common.load_average(),
        ),
        "results": results,
        "targets": targets(results),
    }
    return common.report(result, a.out, "4k", started, print_report, chart)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["bare"]:
        sys.exit(bare(sys.argv[2:]))
    sys.exit(f"usage: python -m benchmarks 4k (this module's own command is bare): {sys.argv}")
