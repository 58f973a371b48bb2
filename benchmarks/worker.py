"""Scenario ``worker``: camera-worker CPU per frame vs the bare JPEG encode of the same frames.

For each resolution (default 720p and 1080p): the real ``python -m cameras.worker
--source test-pattern`` publishes at ``--fps`` to a bare SUB socket that counts frames;
its CPU (user + system, /proc) over the measured window / frames received = worker CPU
per frame. Then, alone, a child encodes the same test-pattern frames (same size, seq and
quality) back to back and times each step with ``time.process_time``: draw, JPEG encode,
stamp. The ratio is worker CPU per frame / bare encode CPU per frame.

Also a child program: ``python -m benchmarks.worker bare --width W --height H ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import wait
from benchmarks.procs import Child, Workspace

TARGET_RATIO = 1.3
BARE_WARMUP_FRAMES = 5
PACED_FRAMES = 150  # bare draw + encode at the worker's fps, for information (not --quick)


def resolutions(text: str) -> list[tuple[int, int]]:
    try:
        parsed = [[int(v) for v in item.lower().split("x")] for item in text.split(",")]
    except ValueError:
        parsed = []
    if not parsed or any(len(p) != 2 or min(p) < 16 for p in parsed):
        raise argparse.ArgumentTypeError(f"expected WxH[,WxH...], got {text!r}")
    return [(w, h) for w, h in parsed]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resolutions",
        type=resolutions,
        default=[(1280, 720), (1920, 1080)],
        metavar="WxH,...",
        help="frame sizes (default 1280x720,1920x1080)",
    )
    p.add_argument("--fps", type=float, default=15.0, help="the worker's --fps (default 15)")
    p.add_argument("--quality", type=int, default=80)


# --- child: the bare encode ----------------------------------------------------------


def bare(args: argparse.Namespace) -> int:
    from broker.protocol import stamp
    from cameras.encoding import encode
    from cameras.sources.testpattern import TestPattern

    pattern = TestPattern(args.width, args.height)
    draw_s = encode_s = stamp_s = 0.0
    size = 0
    for seq in range(-BARE_WARMUP_FRAMES, args.frames):
        now = time.time()
        t0 = time.process_time()
        image = pattern.draw(max(seq, 0), now)
        t1 = time.process_time()
        data = encode(image, "jpeg", args.quality)
        t2 = time.process_time()
        data = stamp.stamp(data, max(seq, 0), now)
        t3 = time.process_time()
        if seq >= 0:
            draw_s, encode_s, stamp_s = draw_s + t1 - t0, encode_s + t2 - t1, stamp_s + t3 - t2
            size += len(data)
    n = args.frames
    result = {
        "frames": n,
        "draw_ms": round(draw_s / n * 1000, 3),
        "encode_ms": round(encode_s / n * 1000, 3),
        "stamp_ms": round(stamp_s / n * 1000, 3),
        "pipeline_ms": round((draw_s + encode_s + stamp_s) / n * 1000, 3),
        "mean_frame_bytes": size // n,
    }
    if args.paced_frames:  # the same steps at the worker's rate: caches go cold in between
        draw_s = encode_s = 0.0
        interval, due = 1 / args.paced_fps, time.monotonic()
        for seq in range(args.paced_frames):
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.process_time()
            image = pattern.draw(seq, time.time())
            t1 = time.process_time()
            encode(image, "jpeg", args.quality)
            t2 = time.process_time()
            draw_s, encode_s = draw_s + t1 - t0, encode_s + t2 - t1
        n = args.paced_frames
        result |= {
            "paced_frames": n,
            "paced_draw_ms": round(draw_s / n * 1000, 3),
            "paced_encode_ms": round(encode_s / n * 1000, 3),
        }
    print(json.dumps(result), flush=True)
    return 0


# --- the scenario --------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    work: Workspace
    children: list[Child] = field(default_factory=list)
    samples: list[dict[str, object]] = field(default_factory=list)

    def stop_children(self) -> None:
        for child in self.children:
            child.stop()
        self.children.clear()


def measure_worker(run: Run, width: int, height: int, warmup: float) -> dict[str, Any]:
    a, label = run.args, f"{width}x{height}"
    endpoint = f"ipc://{run.work.path / f'worker-{label}.ipc'}"
    argv = ["-m", "benchmarks.ingest", "receive", "--endpoint", endpoint, "--hwm", "1000"]
    receiver = Child(f"receiver {label}", argv, run.work.path / f"receiver-{label}.log")
    run.children.append(receiver)
    receiver.expect(timeout=20)
    argv = [
        "-m",
        "cameras.worker",
        "--broker",
        endpoint,
        "--camera-id",
        "bench",
        "--source",
        "test-pattern",
        "--width",
        str(width),
        "--height",
        str(height),
        "--fps",
        f"{a.fps:g}",
        "--quality",
        str(a.quality),
        "--log-level",
        "warning",
    ]
    worker = Child(f"camera-worker {label}", argv, run.work.path / f"worker-{label}.log")
    run.children.append(worker)
    deadline = time.monotonic() + 30
    while receiver.latest.get("frames", 0) == 0:  # the worker's first frame arrived
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name} published nothing:\n{worker.tail()}")
        time.sleep(0.1)
    common.progress(f"{label}: camera-worker (pid {worker.pid}) publishing")
    wait(warmup, f"{label} warm-up")
    cpu = common.CpuMeter([worker.pid])
    receiver.send("start")
    cpu.start()
    started = time.monotonic()

    def tick() -> str:
        cores = cpu.interval()
        run.samples.append(
            {"resolution": label, "t": round(time.monotonic() - started, 2), "worker_cores": cores}
        )
        return f"| camera-worker {cores:.3f} cores"

    wait(a.duration, f"{label} measure", tick)
    receiver.send("stop")
    cpu.interval()
    counted = receiver.expect(10)
    if worker.process.poll() is not None:
        raise RuntimeError(f"{worker.name} exited ({worker.process.returncode}):\n{worker.tail()}")
    run.stop_children()
    frames, seconds = counted["frames_received"], counted["seconds"]
    cpu_s = cpu.total() * (cpu.last_wall - cpu.started_wall)
    return {
        "frames": frames,
        "seconds": seconds,
        "fps": counted["fps"],
        "cores": round(cpu.total(), 4),
        "cpu_s": round(cpu_s, 3),
        "mean_frame_bytes": counted["bytes"] // frames if frames else None,
        "cpu_ms_per_frame": round(cpu_s / frames * 1000, 3) if frames else None,
    }


def measure_bare(run: Run, width: int, height: int, frames: int) -> dict[str, Any]:
    label = f"{width}x{height}"
    paced = 0 if run.args.quick else min(frames, PACED_FRAMES)
    argv = [
        "-m",
        "benchmarks.worker",
        "bare",
        "--width",
        str(width),
        "--height",
        str(height),
        "--quality",
        str(run.args.quality),
        "--frames",
        str(frames),
        "--paced-frames",
        str(paced),
        "--paced-fps",
        f"{run.args.fps:g}",
    ]
    child = Child(f"bare encode {label}", argv, run.work.path / f"bare-{label}.log")
    run.children.append(child)
    common.progress(f"{label}: bare draw + encode + stamp of {frames} frames")
    result = child.expect(timeout=300)
    run.stop_children()
    return result


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def print_report(result: dict) -> None:
    rows = []
    for r in result["results"]:
        w, b = r["worker"], r["bare"]
        rows.append(
            [
                r["resolution"],
                w["frames"],
                w["fps"],
                w["cores"],
                w["cpu_ms_per_frame"],
                b["encode_ms"],
                b["pipeline_ms"],
                r["ratio"],
                r["ratio_pipeline"],
                common.met(r["met"]),
            ]
        )
    headers = [
        "resolution",
        "frames",
        "fps",
        "worker cores",
        "worker ms/f",
        "encode ms/f",
        "draw+enc+stamp ms/f",
        "ratio",
        "ratio vs pipeline",
        f"<= {TARGET_RATIO:g}",
    ]
    print(common.format_table(headers, rows))
    print("\nratio = camera-worker CPU per frame / bare JPEG encode CPU per frame (the target);")
    print("ratio vs pipeline = the same / bare draw + encode + stamp (information only)")
    for r in result["results"]:
        b = r["bare"]
        if "paced_encode_ms" in b:
            print(
                f"{r['resolution']}: bare at {result['parameters']['fps']:g} fps (cold caches "
                f"between frames): draw {b['paced_draw_ms']} ms, encode {b['paced_encode_ms']}"
                f" ms; worker / paced encode {r['ratio_paced']} (information only)"
            )
    t = result["targets"]["ratio"]
    print("\ntargets:")
    worst = common.ratio_text(t["worst"])
    print(f"  worker/encode {worst:>8}  <= {t['limit']:<5g}  {common.met(t['met'])}")


def chart(result: dict, path: Path) -> None:
    fig, (bar_ax, cpu_ax) = common.new_figure(2, f"worker {result['title']}")
    res = result["results"]
    x = list(range(len(res)))
    width = 0.2
    series = (
        ("camera-worker", lambda r: r["worker"]["cpu_ms_per_frame"], "tab:blue"),
        ("bare draw+encode+stamp", lambda r: r["bare"]["pipeline_ms"], "tab:orange"),
        ("bare encode", lambda r: r["bare"]["encode_ms"], "tab:gray"),
    )
    for i, (name, get, color) in enumerate(series):
        bar_ax.bar(
            [v + (i - 1) * width for v in x],
            [get(r) or 0 for r in res],
            width,
            color=color,
            label=name,
        )
    for v, r in zip(x, res, strict=True):
        limit = r["bare"]["encode_ms"] * TARGET_RATIO
        bar_ax.hlines(limit, v - 1.5 * width, v + 1.5 * width, colors="tab:red", linestyles="--")
    bar_ax.set_xticks(x, [r["resolution"] for r in res])
    bar_ax.set_ylabel("CPU ms per frame (red: target)")
    bar_ax.legend(loc="upper left")
    for r in res:
        samples = [s for s in result["samples"] if s["resolution"] == r["resolution"]]
        cpu_ax.plot(
            [s["t"] for s in samples],
            [s["worker_cores"] for s in samples],
            label=f"camera-worker {r['resolution']}",
        )
    cpu_ax.set_xlabel("s into the measured window")
    cpu_ax.set_ylabel("cores")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.legend(loc="lower right")
    common.save_figure(fig, path)


def headline(result: dict) -> list[dict]:
    """The target as rows of the suite's summary (``python -m benchmarks all``)."""
    return [
        {
            "target": f"camera-worker CPU/frame <= {TARGET_RATIO:g} x bare encode, "
            f"{r['resolution']}",
            "measured": f"{common.ratio_text(r['ratio'])} ({r['worker']['cpu_ms_per_frame']} vs "
            f"{r['bare']['encode_ms']} ms)",
            "met": r["met"],
        }
        for r in result["results"]
    ]


def run(args: argparse.Namespace) -> int:
    warmup = common.QUICK_WARMUP if args.quick else common.WARMUP
    bench = Run(args, Workspace())
    started = time.strftime("%Y%m%d-%H%M%S")
    sizes = ", ".join(f"{w}x{h}" for w, h in args.resolutions)
    common.progress(
        f"worker: {sizes} q{args.quality} at {args.fps:g} fps; warm-up "
        f"{warmup:g} s, measure {args.duration:g} s each"
    )
    results: list[dict[str, Any]] = []
    try:
        for w, h in args.resolutions:
            measured = measure_worker(bench, w, h, warmup)
            frames = max(30, int(measured["frames"]))
            base = measure_bare(bench, w, h, frames)
            r = ratio(measured["cpu_ms_per_frame"], base["encode_ms"])
            results.append(
                {
                    "resolution": f"{w}x{h}",
                    "worker": measured,
                    "bare": base,
                    "ratio": r,
                    "ratio_pipeline": ratio(measured["cpu_ms_per_frame"], base["pipeline_ms"]),
                    "ratio_paced": ratio(measured["cpu_ms_per_frame"], base.get("paced_encode_ms")),
                    "met": r is not None and r <= TARGET_RATIO,
                }
            )
    except BaseException:
        common.progress(f"failed; logs kept in {bench.work.keep_logs(args.out)}")
        raise
    finally:
        bench.stop_children()
        bench.work.remove()
    ratios = [r["ratio"] for r in results]
    worst = None if None in ratios else max(ratios)
    a = args
    result = {
        **common.result_head(
            "worker",
            started,
            f"{sizes} q{a.quality} {a.fps:g} fps, {a.duration:g} s each",
            a,
            ("fps", "quality", "duration", "quick"),
            resolutions=[f"{w}x{h}" for w, h in a.resolutions],
            warmup=warmup,
        ),
        "results": results,
        "targets": {"ratio": common.target(TARGET_RATIO, worst, at_least=False, key="worst")},
        "samples": bench.samples,
    }
    return common.report(result, args.out, "worker", started, print_report, chart)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__)
    sub = p.add_subparsers(dest="role", required=True)
    b = sub.add_parser("bare", help="time draw, encode and stamp of test-pattern frames")
    b.add_argument("--width", type=int, required=True)
    b.add_argument("--height", type=int, required=True)
    b.add_argument("--quality", type=int, default=80)
    b.add_argument("--frames", type=int, default=100)
    b.add_argument(
        "--paced-frames",
        type=int,
        default=0,
        help="then draw and encode this many at --paced-fps (a comparison)",
    )
    b.add_argument("--paced-fps", type=float, default=15.0)
    return bare(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
