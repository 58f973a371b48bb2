"""Scenario ``ingest``: frames per second the broker ingests vs a bare pyzmq receive loop.

P publishers send one pre-built ~200 KB stamped JPEG as fast as the receiver takes it
(PUB with ``XPUB_NODROP``: a full queue blocks the sender instead of dropping, so every
frame sent is received). Phase 1: a bare blocking pyzmq SUB loop (``recv_multipart``,
``copy=False``, count) bound on an ipc:// endpoint. Phase 2: the real broker, its
ingest rate read from ``/healthz`` (``ingest.frames``). Same publishers, same payload,
same endpoint type; the ratio is broker fps / bare fps.

With ``--curve``, two more phases over tcp on loopback, as remote workers connect: the
broker without keys, then with ``security.keys_dir`` and every publisher a CURVE client
with its camera's key. The CURVE ratio is keyed fps / plain fps (target
`CURVE_TARGET`).

Also a child program: ``python -m benchmarks.ingest publish|receive ...`` (see --help).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import wait, write_broker_config
from benchmarks.procs import Broker, Child, Workspace, free_port, get_json

TARGET_RATIO = 0.9
CURVE_TARGET = 0.8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publishers", type=int, default=3, help="publisher processes (default 3)")
    p.add_argument(
        "--frame-kb",
        type=int,
        default=200,
        help="payload size: the smallest 1280x720 test-pattern JPEG quality "
        "(80..100) reaching this many KB (default 200)",
    )
    p.add_argument(
        "--hwm", type=int, default=16, help="publishers' SNDHWM, the bare receiver's RCVHWM (16)"
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="also measure ingest with camera keys (CURVE) against without, both over tcp",
    )


# --- child programs ------------------------------------------------------------------


def build_payload(min_bytes: int, width: int = 1280, height: int = 720) -> tuple[bytes, int]:
    """A stamped test-pattern JPEG of at least ``min_bytes`` (or quality 100)."""
    from broker.protocol import stamp
    from cameras.encoding import encode
    from cameras.sources.testpattern import TestPattern

    image, now = TestPattern(width, height).draw(0), time.time()
    for quality in range(80, 101):
        data = encode(image, "jpeg", quality)
        if len(data) >= min_bytes:
            break
    return stamp.stamp(data, 0, now), quality


def publish(args: argparse.Namespace) -> int:
    """Send the payload in a loop until SIGTERM or end of stdin."""
    import zmq

    from broker.protocol import wire

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    payload, quality = build_payload(args.frame_kb * 1000)
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, args.hwm)
    sock.setsockopt(zmq.XPUB_NODROP, 1)  # full queue: send blocks (EAGAIN), never drops
    sock.setsockopt(zmq.SNDTIMEO, 200)
    sock.setsockopt(zmq.LINGER, 0)
    if args.broker_key:
        from cameras.link import curve_client

        for option, value in curve_client(args.broker_key, args.key).items():
            sock.setsockopt(option, value)
    sock.connect(args.endpoint)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    print(json.dumps({"ready": True, "frame_bytes": len(payload), "quality": quality}), flush=True)
    seq = 0
    while True:
        now = time.time()
        header = wire.FrameHeader(args.camera, seq, now, 1280, 720, "jpeg")
        try:
            sock.send_multipart(wire.encode(header, payload), copy=False)  # bytes: shareable
        except zmq.Again:
            continue  # no subscriber yet, or the receiver is behind: retry the same seq
        seq += 1


def receive(args: argparse.Namespace) -> int:
    """Bare receive loop: bind a SUB, count messages; ``start``/``stop`` on stdin."""
    import zmq

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, args.hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.endpoint)
    state = {"frames": 0, "bytes": 0}
    window: dict[str, float] = {}

    def commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "start":
                window.update(frames=state["frames"], bytes=state["bytes"], t=time.monotonic())
            elif command == "stop" and window:
                seconds = time.monotonic() - window["t"]
                frames = state["frames"] - window["frames"]
                print(
                    json.dumps(
                        {
                            "frames_received": frames,
                            "seconds": round(seconds, 3),
                            "fps": round(frames / seconds, 2),
                            "bytes": state["bytes"] - window["bytes"],
                        }
                    ),
                    flush=True,
                )
        os._exit(0)

    def ticks() -> None:
        while True:
            time.sleep(1)
            print(json.dumps({"frames": state["frames"]}), flush=True)

    threading.Thread(target=commands, daemon=True).start()
    threading.Thread(target=ticks, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        parts = sock.recv_multipart(copy=False)
        state["frames"] += 1
        state["bytes"] += len(parts[-1])


# --- the scenario --------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    work: Workspace
    children: list[Child] = field(default_factory=list)
    broker: Broker | None = None
    samples: list[dict[str, float | str]] = field(default_factory=list)

    @property
    def camera_ids(self) -> list[str]:
        return [f"cam{i}" for i in range(self.args.publishers)]


def start_publishers(run: Run, endpoint: str, phase: str, keys: Path | None = None) -> list[Child]:
    """One publisher per camera; with ``keys`` (a keys folder), each a CURVE client with
    its camera's key."""
    a, pubs = run.args, []
    for cid in run.camera_ids:
        curve = (
            []
            if keys is None
            else [
                "--broker-key",
                str(keys / "broker.key"),
                "--key",
                str(keys / "cameras" / f"{cid}.key_secret"),
            ]
        )
        argv = [
            "-m",
            "benchmarks.ingest",
            "publish",
            "--endpoint",
            endpoint,
            "--camera",
            cid,
            "--frame-kb",
            str(a.frame_kb),
            "--hwm",
            str(a.hwm),
            *curve,
        ]
        pubs.append(Child(f"publisher {cid}", argv, run.work.path / f"pub-{phase}-{cid}.log"))
    run.children += pubs
    for p in pubs:
        p.expect(timeout=60)  # payload built, connected
    return pubs


def stop_children(run: Run) -> None:
    for child in run.children:
        child.stop()
    run.children.clear()


def phase(
    run: Run,
    name: str,
    warmup: float,
    counter: Callable[[], int],
    receiver_pid: int,
    pubs: list[Child],
    begin: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Warm up, then measure ``counter()`` (frames received so far) over the window."""
    wait(warmup, f"{name} warm-up")
    recv_cpu = common.CpuMeter([receiver_pid])
    pub_cpu = common.CpuMeter([p.pid for p in pubs])
    if begin is not None:
        begin()
    recv_cpu.start()
    pub_cpu.start()
    first = last = counter()
    started = time.monotonic()

    def tick() -> str:
        nonlocal last
        now_frames, cores, pcores = counter(), recv_cpu.interval(), pub_cpu.interval()
        fps = now_frames - last  # about one second per tick
        last = now_frames
        t = round(time.monotonic() - started, 2)
        run.samples.append(
            {"phase": name, "t": t, "fps": fps, "receiver_cores": cores, "publisher_cores": pcores}
        )
        return f"| {fps} frames/s | receiver {cores:.2f} cores | publishers {pcores:.2f} cores"

    wait(run.args.duration, f"{name} measure", tick)
    frames = counter() - first
    for child in pubs:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.tail()}")
    seconds = time.monotonic() - started
    recv_cpu.interval()
    pub_cpu.interval()
    return {
        "frames": frames,
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 2),
        "receiver_cores": round(recv_cpu.total(), 3),
        "receiver_cpu_us_per_frame": _per_frame_us(recv_cpu.total(), seconds, frames),
        "publisher_cores": round(pub_cpu.total(), 3),
    }


def _per_frame_us(cores: float, seconds: float, frames: int) -> float | None:
    return round(cores * seconds / frames * 1e6, 1) if frames else None


def bare_phase(run: Run, warmup: float) -> dict[str, Any]:
    a = run.args
    endpoint = f"ipc://{run.work.path / 'bare.ipc'}"
    argv = ["-m", "benchmarks.ingest", "receive", "--endpoint", endpoint, "--hwm", str(a.hwm)]
    receiver = Child("bare receiver", argv, run.work.path / "bare-receiver.log")
    run.children.append(receiver)
    receiver.expect(timeout=20)
    pubs = start_publishers(run, endpoint, "bare")
    common.progress(f"bare: receiver (pid {receiver.pid}) and {len(pubs)} publishers up")
    receiver.latest = {"frames": 0}
    # The receiver reports its count once a second; start/stop give the exact window.
    result = phase(
        run,
        "bare",
        warmup,
        lambda: receiver.latest.get("frames", 0),
        receiver.pid,
        pubs,
        begin=lambda: receiver.send("start"),
    )
    receiver.send("stop")
    exact = receiver.expect(10)
    result.update(frames=exact["frames_received"], fps=exact["fps"], seconds=exact["seconds"])
    result["receiver_cpu_us_per_frame"] = _per_frame_us(
        result["receiver_cores"], exact["seconds"], exact["frames_received"]
    )
    stop_children(run)
    return result


def make_keys(run: Run) -> Path:
    """A keys folder with the broker's key and one per camera (as `broker keys` does)."""
    from broker.trust import keys as keyfiles

    folder = keyfiles.private_folder(run.work.path / "keys")
    keyfiles.write_pair(folder, keyfiles.BROKER)
    cameras = keyfiles.private_folder(folder / keyfiles.CAMERAS)
    for cid in run.camera_ids:
        keyfiles.write_pair(cameras, cid)
    return folder


def broker_phase(
    run: Run, warmup: float, name: str = "broker", tcp: bool = False, curve: bool = False
) -> dict[str, Any]:
    """The real broker; over ipc, or over tcp on loopback, with camera keys if ``curve``."""
    endpoint = (
        f"tcp://127.0.0.1:{free_port()}" if tcp else f"ipc://{run.work.path / (name + '.ipc')}"
    )
    keys = make_keys(run) if curve else None
    extra = f'[security]\nkeys_dir = "{keys}"\n' if keys is not None else ""
    config = write_broker_config(run.work.path, endpoint, run.camera_ids, extra=extra)
    run.broker = Broker(config, run.work.path / f"{name}.log")
    run.broker.wait_ready()
    common.progress(f"{name}: broker up on port {run.broker.port} (pid {run.broker.pid})")
    pubs = start_publishers(run, endpoint, name, keys)
    run.broker.wait_online(run.camera_ids)
    common.progress(f"{name}: {len(pubs)} publishers online")
    url = run.broker.url + "/healthz"

    def counter() -> int:
        return get_json(url)["ingest"]["frames"]

    result = phase(run, name, warmup, counter, run.broker.pid, pubs)
    health = get_json(url)
    result["health"] = health
    result["rss_bytes"] = common.rss_bytes(run.broker.pid)
    stop_children(run)
    run.broker.stop()
    run.broker = None
    return result


def print_report(result: dict) -> None:
    bare, broker = result["bare"], result["broker"]
    rows = [
        [
            name,
            r["frames"],
            r["fps"],
            r["receiver_cores"],
            r["receiver_cpu_us_per_frame"],
            r["publisher_cores"],
        ]
        for name, r in (("bare pyzmq loop", bare), ("broker", broker))
    ]
    headers = ["receiver", "frames", "frames/s", "recv cores", "recv us/frame", "pub cores"]
    print(common.format_table(headers, rows))
    mb = result["frame_bytes"] / 1e6
    print(
        f"\nframe {result['frame_bytes']} bytes; broker {broker['fps'] * mb:.0f} MB/s, "
        f"bare {bare['fps'] * mb:.0f} MB/s; broker ingest errors "
        f"{broker['health']['ingest']['errors'] or 'none'}"
    )
    curve = result.get("curve")
    if curve:
        print("\ncamera keys (CURVE), both over tcp on loopback:")
        rows = [
            [name, r["frames"], r["fps"], r["receiver_cores"], r["receiver_cpu_us_per_frame"]]
            for name, r in (("broker, no keys", curve["plain"]), ("broker, CURVE", curve["curve"]))
        ]
        print(common.format_table(headers[:5], rows))
    t = result["targets"]["ratio"]
    print("\ntargets:")
    value = common.ratio_text(t["value"])
    print(f"  broker/bare   {value:>8}  >= {t['limit']:<5g}  {common.met(t['met'])}")
    c = result["targets"].get("curve_ratio")
    if c:
        value = common.ratio_text(c["value"])
        print(f"  curve/plain   {value:>8}  >= {c['limit']:<5g}  {common.met(c['met'])}")


def chart(result: dict, path: Path) -> None:
    fig, (fps_ax, cpu_ax) = common.new_figure(2, f"ingest {result['title']}")
    for name, color in (("bare", "tab:gray"), ("broker", "tab:blue")):
        samples = [s for s in result["samples"] if s["phase"] == name]
        t = [s["t"] for s in samples]
        fps_ax.plot(t, [s["fps"] for s in samples], color=color, label=f"{name} frames/s")
        fps_ax.axhline(result[name]["fps"], color=color, ls="--", lw=1)
        cpu_ax.plot(
            t, [s["receiver_cores"] for s in samples], color=color, label=f"{name}: receiver cores"
        )
        cpu_ax.plot(
            t,
            [s["publisher_cores"] for s in samples],
            color=color,
            ls=":",
            label=f"{name}: publisher cores",
        )
    fps_ax.axhline(
        result["bare"]["fps"] * TARGET_RATIO,
        color="tab:red",
        ls="--",
        lw=1,
        label=f"target {TARGET_RATIO:g} x bare",
    )
    fps_ax.set_ylabel("frames/s received")
    fps_ax.set_ylim(bottom=0)
    fps_ax.legend(loc="lower right")
    cpu_ax.set_xlabel("s into the measured window")
    cpu_ax.set_ylabel("cores")
    cpu_ax.legend(loc="lower right", fontsize=7)
    common.save_figure(fig, path)


def headline(result: dict) -> list[dict]:
    """The target as a row of the suite's summary (``python -m benchmarks all``)."""
    bare, broker = result["bare"], result["broker"]
    t = result["targets"]["ratio"]
    rows = [
        {
            "target": f"broker ingest >= {TARGET_RATIO:g} x a bare pyzmq receive loop",
            "measured": f"{common.ratio_text(t['value'])} ({broker['fps']:.0f} vs "
            f"{bare['fps']:.0f} frames/s of {result['frame_bytes'] / 1000:.0f} KB)",
            "met": t["met"],
        }
    ]
    c = result["targets"].get("curve_ratio")
    if c:
        curve = result["curve"]
        rows.append(
            {
                "target": f"CURVE ingest >= {CURVE_TARGET:g} x ingest without keys (tcp)",
                "measured": f"{common.ratio_text(c['value'])} ({curve['curve']['fps']:.0f} vs "
                f"{curve['plain']['fps']:.0f} frames/s)",
                "met": c["met"],
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    warmup = common.QUICK_WARMUP if args.quick else common.WARMUP
    bench = Run(args, Workspace())
    started = time.strftime("%Y%m%d-%H%M%S")
    common.progress(
        f"ingest: {args.publishers} publishers, ~{args.frame_kb} KB frames; "
        f"warm-up {warmup:g} s, measure {args.duration:g} s per phase"
    )
    try:
        frame_bytes = len(build_payload(args.frame_kb * 1000)[0])
        bare = bare_phase(bench, warmup)
        broker = broker_phase(bench, warmup)
        curve: dict[str, Any] | None = None
        if args.curve:
            plain = broker_phase(bench, warmup, "tcp", tcp=True)
            keyed = broker_phase(bench, warmup, "tcp+curve", tcp=True, curve=True)
            ratio = round(keyed["fps"] / plain["fps"], 3) if plain["fps"] else None
            curve = {"plain": plain, "curve": keyed, "ratio": ratio}
    except BaseException:
        common.progress(f"failed; logs kept in {bench.work.keep_logs(args.out)}")
        raise
    finally:
        stop_children(bench)
        if bench.broker is not None:
            bench.broker.stop()
        bench.work.remove()
    ratio = round(broker["fps"] / bare["fps"], 3) if bare["fps"] else None
    a = args
    result = {
        **common.result_head(
            "ingest",
            started,
            f"{a.publishers} publishers, {frame_bytes / 1000:.0f} KB frames, ipc, "
            f"{a.duration:g} s per phase",
            a,
            ("publishers", "frame_kb", "hwm", "curve", "duration", "quick"),
            warmup=warmup,
        ),
        "frame_bytes": frame_bytes,
        "bare": bare,
        "broker": broker,
        "ratio": ratio,
        "targets": {
            "ratio": common.target(TARGET_RATIO, ratio, at_least=True),
            **(
                {"curve_ratio": common.target(CURVE_TARGET, curve["ratio"], at_least=True)}
                if curve
                else {}
            ),
        },
        **({"curve": curve} if curve else {}),
        "samples": bench.samples,
    }
    return common.report(result, args.out, "ingest", started, print_report, chart)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__)
    sub = p.add_subparsers(dest="role", required=True)
    pub = sub.add_parser("publish", help="send a ~200 KB frame as fast as it is taken")
    pub.add_argument("--endpoint", required=True)
    pub.add_argument("--camera", required=True)
    pub.add_argument("--frame-kb", type=int, default=200)
    pub.add_argument("--hwm", type=int, default=16)
    pub.add_argument("--broker-key", help="the broker's public key file: publish with CURVE")
    pub.add_argument("--key", help="this camera's secret key file (with --broker-key)")
    rec = sub.add_parser("receive", help="bare blocking SUB loop, counting frames")
    rec.add_argument("--endpoint", required=True)
    rec.add_argument("--hwm", type=int, default=16)
    args = p.parse_args(argv)
    return publish(args) if args.role == "publish" else receive(args)


if __name__ == "__main__":
    sys.exit(main())
