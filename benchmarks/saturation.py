"""Scenario ``saturation``: the highest egress the broker sustains, against the machine's
ceiling for the same work measured in the same run.

One broker and C replay publishers; the load is raised step by step (``--steps``: clients
per camera). At each step, first the broker: S clients per camera, warm-up, a measured
window; the step is *sustained* when every client got >= 99% of the frames published in
its window, the p99 latency over all clients is at most one frame interval, no client was
closed and the publishers kept their rate. Then, with the broker and the publishers
paused (SIGSTOP), the ceiling: the same number of connections, opened by the same client
program in as many processes, to `benchmarks.sendall`, which writes the same JPEG bytes
with plain trio ``send_all``, unpaced. The ramp stops once ``--patience`` + 1 steps in a
row are not sustained. ``ratio`` = the highest sustained broker egress / the ceiling
measured at that step's connection count; the target is >= 0.6.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import (
    Run,
    collect,
    measure,
    start_cameras,
    start_clients,
    stop_clients,
    wait,
    write_config,
)
from benchmarks.procs import Child

SCENARIO = "saturation"
TARGET_RATIO = 0.6
TARGET_DELIVERED = 0.99
MAX_SKIPPED = 0.01  # a publisher that skipped more slots than this did not offer the load
DEFAULT_SECONDS = 10.0  # per step and phase (--duration)
QUICK_STEPS = [1, 2]


def steps(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected rising counts like 4,8,16, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, help="cameras (default 4; --quick 1)")
    p.add_argument(
        "--steps",
        type=steps,
        metavar="S,S,...",
        help="clients per camera at each step (default "
        "4,8,16,24,32,48,64,96,128,192,256; --quick 1,2)",
    )
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="client processes sharing the connections, in both phases (2)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=1,
        help="unsustained steps tolerated before the ramp stops (default 1: it "
        "stops after two in a row; a busy machine can spoil one step)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="the broker serves wss (a self-signed certificate); the ceiling stays plain "
        "send_all, so the ratio is the cost of TLS and the broker together",
    )


def _defaults(a: argparse.Namespace) -> None:
    if a.cameras is None:
        a.cameras = 1 if a.quick else 4
    if a.steps is None:
        a.steps = QUICK_STEPS if a.quick else [4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]


# --- the run -------------------------------------------------------------------------


def pause(run: Run, paused: bool) -> None:
    """Stop (SIGSTOP) or resume the broker and the publishers, for the ceiling phase."""
    assert run.broker is not None
    for pid in [run.broker.pid, *(r.pid for r in run.replays)]:
        os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)


def ceiling_phase(run: Run, sender: Child, port: int, per_camera: int, warmup: float) -> dict:
    start_clients(run, per_camera, port=port, options=["--brief"], tag=f"-ceiling{per_camera}")
    wait(warmup, f"{per_camera}/camera ceiling warm-up")
    cpu = common.CpuMeter([sender.pid])
    clients_cpu = common.CpuMeter([c.pid for c in run.clients])
    for child in run.clients:
        child.send("start")
    cpu.start()
    clients_cpu.start()

    def tick() -> str:
        frames = sum(c.latest.get("frames", 0) for c in run.clients)
        return (
            f"| sender {cpu.interval():.2f} cores | clients {clients_cpu.interval():.2f} "
            f"cores | frames received {frames}"
        )

    wait(run.args.duration, f"{per_camera}/camera ceiling", tick)
    for child in run.clients:
        child.send("stop")
    summaries = [c.expect(30) for c in run.clients]
    stop_clients(run)
    return {"clients": summaries, "sender_cores": cpu.total(), "client_cores": clients_cpu.total()}


def execute(run: Run, warmup: float) -> dict:
    a = run.args
    common.progress(
        f"{SCENARIO}: {a.cameras} cameras, {a.width}x{a.height} q{a.quality} "
        f"{a.fps:g} fps; clients per camera {a.steps}; each step {warmup:g} + "
        f"{a.duration:g} s broker, then the same for the send_all ceiling"
    )
    broker = start_cameras(run, write_config(run))
    argv = [
        "-m",
        "benchmarks.sendall",
        "--width",
        str(a.width),
        "--height",
        str(a.height),
        "--quality",
        str(a.quality),
    ]
    sender = Child("send_all ceiling", argv, run.work.path / "sendall.log")
    run.replays.append(sender)  # stopped with the load generators
    ready = sender.expect(timeout=60)
    run.replays.remove(sender)
    done: list[dict] = []
    failed_in_a_row = 0
    try:
        for per_camera in a.steps:
            common.progress(
                f"step {per_camera} clients per camera "
                f"({per_camera * a.cameras} connections): broker"
            )
            run.samples = []
            start_clients(run, per_camera, tag=f"-broker{per_camera}")
            wait(warmup, f"{per_camera}/camera broker warm-up")
            raw = measure(run, label=f"{per_camera}/camera broker")
            raw["samples"] = run.samples
            stop_clients(run)
            step = {"per_camera": per_camera, "broker": summarise_broker(run, raw, per_camera)}
            pause(run, True)
            try:
                step["ceiling"] = summarise_ceiling(
                    ceiling_phase(run, sender, ready["port"], per_camera, warmup)
                )
            finally:
                pause(run, False)
            done.append(step)
            b, c = step["broker"], step["ceiling"]
            verdict = "sustained" if b["sustained"] else "NOT sustained: " + "; ".join(b["reasons"])
            common.progress(
                f"step {per_camera}/camera: broker {b['egress_mb_s']:.0f} MB/s "
                f"({verdict}), ceiling {c['egress_mb_s']:.0f} MB/s"
            )
            failed_in_a_row = 0 if b["sustained"] else failed_in_a_row + 1
            if failed_in_a_row > a.patience:
                break
            broker.wait_online(run.camera_ids)  # resumed publishers are back
    finally:
        sender.stop()
    return {"steps": done, "frame_bytes": ready["mean_frame_bytes"]}


# --- analysis ------------------------------------------------------------------------


def _egress(summaries: list[dict]) -> tuple[float, float, int, int]:
    """Payload MB/s and frames/s over all client processes, frames and bytes counted."""
    mb_s = fps = 0.0
    frames = size = 0
    for s in summaries:
        seconds = s["seconds"] or 1e-9
        f = sum(c["frames"] for c in s["connections"])
        b = sum(c["bytes"] for c in s["connections"])
        mb_s, fps, frames, size = mb_s + b / seconds / 1e6, fps + f / seconds, frames + f, size + b
    return mb_s, fps, frames, size


def summarise_broker(run: Run, raw: dict, per_camera: int) -> dict[str, Any]:
    a = run.args
    connections = [conn for c in raw["clients"] for conn in c["connections"]]
    samples = [v / 1000 for conn in connections for v in conn["latencies_ms"]]
    delivered = [
        conn["frames"] / conn["seq_span"] if conn["seq_span"] else 0.0 for conn in connections
    ]
    mb_s, fps, frames, size = _egress(raw["clients"])
    latency = common.latency_summary_ms(samples)
    interval_ms = 1000 / a.fps
    sources = raw["replays"]
    skipped = max(
        (r["skipped_slots"] / max(1, r["published"]) for r in sources.values()), default=0.0
    )
    closed = sum(conn["closed"] for conn in connections)
    reasons = []
    worst = min(delivered, default=0.0)
    if worst < TARGET_DELIVERED:
        reasons.append(f"a client got {worst:.1%} of the frames")
    if latency["p99_ms"] is None or latency["p99_ms"] > interval_ms:
        reasons.append(f"p99 {latency['p99_ms']} ms > {interval_ms:.1f} ms")
    if closed:
        reasons.append(f"{closed} connections closed")
    if len(connections) != a.cameras * per_camera:
        reasons.append(f"{len(connections)} of {a.cameras * per_camera} connections")
    if skipped > MAX_SKIPPED:
        reasons.append(f"publishers skipped {skipped:.1%} of their slots")
    return {
        "connections": len(connections),
        "egress_mb_s": round(mb_s, 2),
        "frames_per_s": round(fps, 1),
        "frames": frames,
        "bytes": size,
        "min_delivered": round(worst, 4),
        "min_fps": min((c["fps"] or 0.0 for c in connections), default=0.0),
        "latency": latency,
        "closed": closed,
        "sources": sources,
        "max_skipped_share": round(skipped, 4),
        "broker_cores": round(raw["broker_cores"], 3),
        "broker_us_per_frame": _per_frame_us(raw["broker_cores"], fps),
        "loadgen_cores": round(raw["loadgen_cores"], 3),
        "broker_rss_bytes": raw["broker_rss_bytes"],
        "health": raw["health"],
        "sustained": not reasons,
        "reasons": reasons,
        "samples": raw["samples"],
    }


def summarise_ceiling(raw: dict) -> dict[str, Any]:
    mb_s, fps, frames, size = _egress(raw["clients"])
    return {
        "connections": sum(len(s["connections"]) for s in raw["clients"]),
        "egress_mb_s": round(mb_s, 2),
        "frames_per_s": round(fps, 1),
        "frames": frames,
        "bytes": size,
        "sender_cores": round(raw["sender_cores"], 3),
        "sender_us_per_frame": _per_frame_us(raw["sender_cores"], fps),
        "client_cores": round(raw["client_cores"], 3),
    }


def _per_frame_us(cores: float, frames_per_s: float) -> float | None:
    """CPU microseconds per frame delivered to one client."""
    return round(cores / frames_per_s * 1e6, 1) if frames_per_s else None


def best_step(steps_done: list[dict]) -> dict | None:
    sustained = [s for s in steps_done if s["broker"]["sustained"]]
    return max(sustained, key=lambda s: s["broker"]["egress_mb_s"], default=None)


# --- output --------------------------------------------------------------------------


def print_report(result: dict) -> None:
    rows = []
    for s in result["steps"]:
        b, c = s["broker"], s["ceiling"]
        ratio = b["egress_mb_s"] / c["egress_mb_s"] if c["egress_mb_s"] else None
        rows.append(
            [
                s["per_camera"],
                b["connections"],
                b["egress_mb_s"],
                b["frames_per_s"],
                b["min_delivered"] * 100,
                b["latency"]["p50_ms"],
                b["latency"]["p99_ms"],
                b["broker_cores"],
                b.get("broker_us_per_frame"),
                b["loadgen_cores"],
                c["egress_mb_s"],
                c["frames_per_s"],
                c["sender_cores"],
                c.get("sender_us_per_frame"),
                c["client_cores"],
                ratio,
                "yes" if b["sustained"] else "no: " + "; ".join(b["reasons"]),
            ]
        )
    headers = [
        "per cam",
        "conns",
        "MB/s",
        "frames/s",
        "min deliv%",
        "p50 ms",
        "p99 ms",
        "broker cores",
        "broker us/f",
        "loadgen cores",
        "ceiling MB/s",
        "ceiling f/s",
        "sender cores",
        "sender us/f",
        "ceiling client cores",
        "ratio",
        "sustained",
    ]
    print(common.format_table(headers, rows))
    best, t = result["best"], result["targets"]["ratio"]
    frame = result["frame_bytes"] / 1000
    print(
        f"\nframes {frame:.0f} KB; sustained = every client >= {TARGET_DELIVERED:.0%} of its "
        f"frames, p99 <= {1000 / result['parameters']['fps']:.1f} ms (one frame interval), "
        f"none closed, publishers on time"
    )
    if best:
        b, c = best["broker"], best["ceiling"]
        print(
            f"highest sustained egress: {b['egress_mb_s']:.0f} MB/s, {b['frames_per_s']:.0f} "
            f"frames/s ({best['per_camera']} clients per camera, {b['connections']} "
            f"connections; broker {b['broker_cores']:.2f} cores)"
        )
        print(
            f"send_all ceiling at {c['connections']} connections: {c['egress_mb_s']:.0f} "
            f"MB/s, {c['frames_per_s']:.0f} frames/s (sender {c['sender_cores']:.2f} "
            f"cores)"
        )
    else:
        print("no step was sustained")
    print("\ntargets:")
    print(
        f"  egress/ceiling {common.ratio_text(t['value']):>8}  >= {t['limit']:<5g}  "
        f"{common.met(t['met'])}"
    )


def chart(result: dict, path: Path) -> None:
    fig, (egress_ax, lat_ax, cpu_ax) = common.new_figure(3, f"{SCENARIO} {result['title']}")
    steps_done = result["steps"]
    x = [s["broker"]["connections"] for s in steps_done]
    broker = [s["broker"]["egress_mb_s"] for s in steps_done]
    ceiling = [s["ceiling"]["egress_mb_s"] for s in steps_done]
    egress_ax.plot(x, ceiling, "o-", color="tab:gray", label="plain trio send_all (ceiling)")
    egress_ax.plot(
        x,
        [v * TARGET_RATIO for v in ceiling],
        ":",
        color="tab:red",
        label=f"target: {TARGET_RATIO:g} x ceiling",
    )
    egress_ax.plot(x, broker, "o-", color="tab:blue", label="broker (WebSocket)")
    bad = [
        (xi, v)
        for xi, v, s in zip(x, broker, steps_done, strict=True)
        if not s["broker"]["sustained"]
    ]
    if bad:
        egress_ax.plot(
            *zip(*bad, strict=True),
            "x",
            color="tab:red",
            ms=12,
            mew=2,
            label="broker: not sustained",
        )
    best = result["best"]
    if best:
        egress_ax.annotate(
            f"{best['broker']['egress_mb_s']:.0f} MB/s",
            (best["broker"]["connections"], best["broker"]["egress_mb_s"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
        )
    _connections_axis(egress_ax, x)
    egress_ax.set_xlabel(
        f"connections ({result['parameters']['cameras']} cameras x clients per camera)"
    )
    egress_ax.set_ylabel("payload MB/s received")
    egress_ax.set_ylim(bottom=0)
    egress_ax.legend(loc="upper left")
    for key, color in (("p50_ms", "tab:blue"), ("p99_ms", "tab:orange"), ("max_ms", "tab:gray")):
        lat_ax.plot(
            x,
            [s["broker"]["latency"][key] or 0 for s in steps_done],
            "o-",
            color=color,
            label=f"broker {key[:-3]}",
        )
    lat_ax.axhline(
        1000 / result["parameters"]["fps"],
        color="tab:red",
        ls="--",
        lw=1,
        label="one frame interval",
    )
    _connections_axis(lat_ax, x)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency ms")
    lat_ax.legend(loc="upper left")
    for label, get, style in (
        ("broker", lambda s: s["broker"]["broker_cores"], "o-"),
        ("broker-phase load generators", lambda s: s["broker"]["loadgen_cores"], "o:"),
        ("send_all sender", lambda s: s["ceiling"]["sender_cores"], "s-"),
        ("ceiling-phase clients", lambda s: s["ceiling"]["client_cores"], "s:"),
    ):
        cpu_ax.plot(x, [get(s) for s in steps_done], style, label=label)
    _connections_axis(cpu_ax, x)
    cpu_ax.set_xlabel("connections")
    cpu_ax.set_ylabel("cores")
    cpu_ax.legend(loc="upper left", fontsize=8)
    common.save_figure(fig, path)


def _connections_axis(ax: Any, x: list[int]) -> None:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [str(v) for v in x])


def headline(result: dict) -> list[dict]:
    """The target as a row of the suite's summary (``python -m benchmarks all``)."""
    t, best = result["targets"]["ratio"], result["best"]
    if best:
        b, c = best["broker"], best["ceiling"]
        measured = (
            f"{common.ratio_text(t['value'])}: {b['egress_mb_s']:.0f} MB/s "
            f"({b['frames_per_s']:.0f} frames/s, {b['connections']} clients) vs "
            f"{c['egress_mb_s']:.0f} MB/s"
        )
    else:
        measured = "no load step sustained"
    return [
        {
            "target": f"sustained egress >= {TARGET_RATIO:g} x plain send_all ceiling",
            "measured": measured,
            "met": t["met"],
        }
    ]


def run(args: argparse.Namespace) -> int:
    _defaults(args)
    _, raw, warmup, started = collect(args, execute)
    best = best_step(raw["steps"])
    ratio = None
    if best and best["ceiling"]["egress_mb_s"]:
        ratio = round(best["broker"]["egress_mb_s"] / best["ceiling"]["egress_mb_s"], 3)
    a = args
    result = {
        **common.result_head(
            SCENARIO,
            started,
            f"{a.cameras} cameras{' over TLS' if a.tls else ''}, {a.width}x{a.height} "
            f"q{a.quality} {a.fps:g} fps, {a.duration:g} s per step",
            a,
            (
                "cameras",
                "steps",
                "width",
                "height",
                "fps",
                "quality",
                "client_procs",
                "patience",
                "duration",
                "quick",
                "tls",
            ),
            warmup=warmup,
        ),
        "frame_bytes": raw["frame_bytes"],
        "steps": raw["steps"],
        "best": best,
        "ratio": ratio,
        "targets": {"ratio": common.target(TARGET_RATIO, ratio, at_least=True)},
    }
    return common.report(result, args.out, SCENARIO, started, print_report, chart)
