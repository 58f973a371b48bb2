"""Scenario ``tls``: what TLS costs, a plain and a TLS broker measured in one run.

Two brokers with the same cameras, each fed by its own replay publishers: one serving
ws, one wss with a self-signed certificate (clients verify it). The load rises step by
step (``--steps``: clients per camera); at each step the plain broker is measured, then
the TLS one, each while the other is paused with its publishers (SIGSTOP) so the two
never compete for the CPU. A step is *sustained* by `saturation`'s criterion (every
client >= 99% of the frames, p99 <= one frame interval, none closed, publishers on
time); a mode stops rising after ``--patience`` + 1 unsustained steps in a row.

``ratio`` = the highest sustained TLS egress / the highest sustained plain egress; the
target is >= 0.5. The broker's CPU per frame delivered to one client is shown for both:
on a shared machine it is the steadier figure of the two.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from benchmarks import common, saturation
from benchmarks.harness import (
    Run,
    measure,
    shutdown,
    start_cameras,
    start_clients,
    stop_clients,
    wait,
    write_config,
)
from benchmarks.procs import Workspace

SCENARIO = "tls"
TARGET_RATIO = 0.5
DEFAULT_SECONDS = 10.0  # per step and mode (--duration)
MODES = ("plain", "tls")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, help="cameras (default 4; --quick 1)")
    p.add_argument(
        "--steps",
        type=saturation.steps,
        metavar="S,S,...",
        help="clients per camera at each step (default 4,8,16,24,32,48,64,96; --quick 1,2)",
    )
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--client-procs", type=int, default=2, help="client processes (2)")
    p.add_argument(
        "--patience",
        type=int,
        default=1,
        help="unsustained steps tolerated per mode before it stops rising (default 1)",
    )


def _run_for(args: argparse.Namespace, tls: bool) -> Run:
    mode_args = copy.copy(args)
    mode_args.tls = tls
    return Run(mode_args, Workspace())


def measure_step(run: Run, per_camera: int, warmup: float, mode: str) -> dict[str, Any]:
    """One step on ``run``'s broker (resumed for it, paused again after)."""
    saturation.pause(run, False)
    try:
        assert run.broker is not None
        run.broker.wait_online(run.camera_ids)  # resumed publishers are back
        run.samples = []
        start_clients(run, per_camera, tag=f"-{mode}{per_camera}")
        wait(warmup, f"{per_camera}/camera {mode} warm-up")
        raw = measure(run, label=f"{per_camera}/camera {mode}")
        raw["samples"] = run.samples
        stop_clients(run)
        return saturation.summarise_broker(run, raw, per_camera)
    finally:
        saturation.pause(run, True)


def execute(args: argparse.Namespace, warmup: float) -> dict[str, Any]:
    runs = {mode: _run_for(args, mode == "tls") for mode in MODES}
    done: list[dict[str, Any]] = []
    try:
        for mode, run in runs.items():
            start_cameras(run, write_config(run))
            saturation.pause(run, True)
            common.progress(f"{mode} broker ready on port {run.broker.port if run.broker else 0}")
        failed = dict.fromkeys(MODES, 0)
        for per_camera in args.steps:
            step: dict[str, Any] = {"per_camera": per_camera}
            for mode, run in runs.items():
                if failed[mode] > args.patience:
                    continue
                common.progress(f"step {per_camera} clients per camera: {mode}")
                b = step[mode] = measure_step(run, per_camera, warmup, mode)
                failed[mode] = 0 if b["sustained"] else failed[mode] + 1
                verdict = "sustained" if b["sustained"] else "NOT: " + "; ".join(b["reasons"])
                common.progress(
                    f"step {per_camera}/camera {mode}: {b['egress_mb_s']:.0f} MB/s, broker "
                    f"{b['broker_cores']:.2f} cores, {b['broker_us_per_frame']} us/frame "
                    f"({verdict})"
                )
            done.append(step)
            if all(count > args.patience for count in failed.values()):
                break
    except BaseException:
        for mode, run in runs.items():
            common.progress(f"failed; {mode} logs kept in {run.work.keep_logs(args.out / mode)}")
        raise
    finally:
        for run in runs.values():
            if run.broker is not None:
                saturation.pause(run, False)  # a stopped process ignores SIGTERM
            shutdown(run)
            run.work.remove()
    return {"steps": done}


def best(steps_done: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    sustained = [s for s in steps_done if mode in s and s[mode]["sustained"]]
    return max(sustained, key=lambda s: s[mode]["egress_mb_s"], default=None)


def print_report(result: dict[str, Any]) -> None:
    rows = []
    for s in result["steps"]:
        row: list[object] = [s["per_camera"]]
        for mode in MODES:
            b = s.get(mode)
            if b is None:
                row += [None] * 5
                continue
            row += [
                b["connections"],
                b["egress_mb_s"],
                b["broker_cores"],
                b["broker_us_per_frame"],
                "yes" if b["sustained"] else "no: " + "; ".join(b["reasons"]),
            ]
        plain, tls = s.get("plain"), s.get("tls")
        cost = None
        if plain and tls and plain["broker_us_per_frame"] and tls["broker_us_per_frame"]:
            cost = round(tls["broker_us_per_frame"] / plain["broker_us_per_frame"], 2)
        rows.append([*row, cost])
    headers = ["per cam"]
    for mode in MODES:
        headers += [f"{mode} conns", f"{mode} MB/s", f"{mode} cores", f"{mode} us/f", "sustained"]
    headers.append("us/f tls/plain")
    print(common.format_table(headers, rows))
    for mode in MODES:
        b = result["best"][mode]
        if b is None:
            print(f"{mode}: no step was sustained")
        else:
            print(
                f"{mode}: highest sustained egress {b[mode]['egress_mb_s']:.0f} MB/s at "
                f"{b[mode]['connections']} connections (broker {b[mode]['broker_cores']:.2f} "
                f"cores, {b[mode]['broker_us_per_frame']} us per frame per client)"
            )
    t = result["targets"]["ratio"]
    print("\ntargets:")
    print(
        f"  tls/plain egress {common.ratio_text(t['value']):>8}  >= {t['limit']:<5g}  "
        f"{common.met(t['met'])}"
    )


def chart(result: dict[str, Any], path: Path) -> None:
    fig, (egress_ax, cpu_ax) = common.new_figure(2, f"{SCENARIO} {result['title']}")
    for mode, color in (("plain", "tab:blue"), ("tls", "tab:orange")):
        steps_done = [s for s in result["steps"] if mode in s]
        x = [s[mode]["connections"] for s in steps_done]
        egress_ax.plot(
            x, [s[mode]["egress_mb_s"] for s in steps_done], "o-", color=color, label=mode
        )
        cpu_ax.plot(x, [s[mode]["broker_us_per_frame"] or 0 for s in steps_done], "o-", color=color)
    egress_ax.set_ylabel("payload MB/s received")
    egress_ax.set_ylim(bottom=0)
    egress_ax.legend(loc="upper left")
    cpu_ax.set_ylabel("broker CPU us per frame per client")
    cpu_ax.set_xlabel("connections")
    cpu_ax.set_ylim(bottom=0)
    common.save_figure(fig, path)


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    t = result["targets"]["ratio"]
    return [
        {
            "target": f"TLS sustained egress >= {TARGET_RATIO:g} x plain",
            "measured": common.ratio_text(t["value"]),
            "met": t["met"],
        }
    ]


def run(args: argparse.Namespace) -> int:
    if args.cameras is None:
        args.cameras = 1 if args.quick else 4
    if args.steps is None:
        args.steps = [1, 2] if args.quick else [4, 8, 16, 24, 32, 48, 64, 96]
    warmup = common.QUICK_WARMUP if args.quick else common.WARMUP
    started = time.strftime("%Y%m%d-%H%M%S")
    raw = execute(args, warmup)
    bests = {mode: best(raw["steps"], mode) for mode in MODES}
    ratio = None
    if bests["plain"] and bests["tls"]:
        ratio = round(
            bests["tls"]["tls"]["egress_mb_s"] / bests["plain"]["plain"]["egress_mb_s"], 3
        )
    a = args
    result = {
        **common.result_head(
            SCENARIO,
            started,
            f"{a.cameras} cameras, ws and wss, {a.width}x{a.height} q{a.quality} "
            f"{a.fps:g} fps, {a.duration:g} s per step and mode",
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
            ),
            warmup=warmup,
        ),
        "steps": raw["steps"],
        "best": bests,
        "ratio": ratio,
        "targets": {"ratio": common.target(TARGET_RATIO, ratio, at_least=True)},
    }
    return common.report(result, args.out, SCENARIO, started, print_report, chart)
