"""Scenario ``analytics``: what analysis costs the viewers, the broker and the analyzer.

One real broker with ``[analytics] enabled``, C replay cameras (camera 0 publishes a
photograph with a face, skimage's astronaut letterboxed; the others the test pattern)
and S WebSocket clients per camera. Two measured windows in the same run:

- **off**: every camera's ``ai_enabled`` false (the analyzer runs, subscribed to nothing);
- **on**: ``motion`` on every camera, ``face`` on camera 0, at ``--analytics-fps``.

Compared: per client delivered fps (on / off, target >= 0.99) and p99 latency (on / off,
target <= 1.1), broker CPU (on - off). A third window, **load**, is the control: analysis
off again and a plain busy loop in another process using what the analyzer used during
"on" (its cores, in bursts at the face detector's 5 Hz), so a p99 ratio that comes from
sharing two cores at all, and not from analysis, shows as the same ratio there. During
"on" a /ws listener times each analytics event from its frame's capture to its arrival
(``objects_detected``: ``captured_at``; motion: ``time``), target p99 <= 300 ms. Then,
per detector, camera 0 alone with that model: analyzer CPU (/proc) per analysed frame
(from /api/stats) at the camera's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.harness import (
    Run,
    collect,
    measure,
    start_broker,
    start_clients,
    start_replays,
    stop_clients,
    wait,
    write_config,
)
from benchmarks.procs import get_json

DEFAULT_SECONDS = 15.0
TARGET_DELIVERED_RATIO = 0.99
TARGET_P99_RATIO = 1.1
TARGET_EVENT_P99_MS = 300.0
DETECTORS = ("motion", "face", "person")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, help="cameras (default 4; --quick 2)")
    p.add_argument("--clients", type=int, help="clients per camera (default 2; --quick 1)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--analytics-fps", type=float, default=5.0, help="analytics.fps (default 5)")
    p.add_argument("--client-procs", type=int, default=1)


def face_photo() -> str:
    import skimage  # the test extra; its photographs ship inside the wheel

    return str(Path(skimage.__file__).parent / "data" / "astronaut.png")


def patch(url: str, camera: str, settings: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{url}/api/cameras/{camera}/settings",
        data=json.dumps(settings).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class EventListener(threading.Thread):
    """A /ws client (the client library) in a thread: arrival time and latency of each
    analytics event."""

    def __init__(self, port: int) -> None:
        super().__init__(name="events", daemon=True)
        self.port = port
        self.latencies: dict[str, list[float]] = {}
        self.counting = False
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        import trio

        from broker.client import connect

        async def listen() -> None:
            async with connect(f"ws://127.0.0.1:{self.port}/ws") as client:
                client.on("event", self.take)
                self.ready.set()
                await trio.to_thread.run_sync(self.stopping.wait)

        trio.run(listen)

    def take(self, message: dict[str, Any]) -> None:
        now, data = time.time(), message.get("data") or {}
        event = message.get("event")
        captured = data.get("captured_at") if event == "objects_detected" else data.get("time")
        if self.counting and isinstance(captured, int | float) and event:
            self.latencies.setdefault(event, []).append(now - captured)


def analysed(url: str, camera: str) -> int:
    stats = get_json(url + "/api/stats")
    assert isinstance(stats, dict)
    entry = next(c for c in stats["cameras"] if c["id"] == camera)
    return int(entry.get("analytics", {}).get("analysed", 0))


def analyzer_pid(url: str, within: float = 30) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        health = get_json(url + "/healthz")
        assert isinstance(health, dict)
        if health["analytics"]["connected"]:
            return int(health["analytics"]["pid"])
        time.sleep(0.2)
    raise TimeoutError("the analyzer never connected")


# A process that keeps one core busy ``duty`` of the time, in bursts every 200 ms.
BUSY_LOOP = """
import sys, time
duty, period = float(sys.argv[1]), 0.2
while True:
    start = time.monotonic()
    while time.monotonic() - start < duty * period:
        pass
    time.sleep(max(0.0, period - (time.monotonic() - start)))
"""


def phase(run: Run, warmup: float, label: str) -> dict[str, Any]:
    start_clients(run)
    wait(warmup, f"{label}: warm-up")
    raw = measure(run, label=f"{label}: measure")
    stop_clients(run)
    return raw


def per_client(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {conn["name"]: conn for c in raw["clients"] for conn in c["connections"]}


def detector_cost(run: Run, model: str, seconds: float) -> dict[str, Any]:
    """Camera 0 alone with ``model``: analyzer CPU ms per analysed frame."""
    assert run.broker is not None
    url, cameras = run.broker.url, run.camera_ids
    for cid in cameras:
        patch(url, cid, {"ai_enabled": cid == cameras[0], "ai_model": model})
    time.sleep(1.0)
    pid = analyzer_pid(url)
    before_cpu, before = common.cpu_seconds(pid) or 0.0, analysed(url, cameras[0])
    wait(seconds, f"detector {model}")
    after_cpu, after = common.cpu_seconds(pid) or 0.0, analysed(url, cameras[0])
    frames = after - before
    return {
        "model": model,
        "frames": frames,
        "fps": round(frames / seconds, 2),
        "cpu_ms_per_frame": round(1000 * (after_cpu - before_cpu) / frames, 2) if frames else None,
    }


def run(args: argparse.Namespace) -> int:
    if args.cameras is None:
        args.cameras = 2 if args.quick else 4
    if args.clients is None:
        args.clients = 1 if args.quick else 2

    def execute(run: Run, warmup: float) -> dict[str, Any]:
        a = run.args
        common.progress(
            f"analytics: {a.cameras} cameras x {a.clients} clients, {a.width}x{a.height} at "
            f"{a.fps:g} fps; analysis at {a.analytics_fps:g} fps; measure {a.duration:g} s each"
        )
        extra = f"[analytics]\nenabled = true\nfps = {a.analytics_fps}\n"
        broker = start_broker(run, write_config(run, extra))
        start_replays(run, {run.camera_ids[0]: face_photo()})
        broker.wait_online(run.camera_ids)
        pid = analyzer_pid(broker.url)
        off = phase(run, warmup, "off")
        for cid in run.camera_ids:
            model = "face" if cid == run.camera_ids[0] else "motion"
            patch(broker.url, cid, {"ai_enabled": True, "ai_model": model, "ai_confidence": 0.5})
        listener = EventListener(broker.port)
        listener.start()
        listener.ready.wait(10)
        counts_before = {cid: analysed(broker.url, cid) for cid in run.camera_ids}
        analyzer = common.CpuMeter([pid])
        analyzer.start()
        listener.counting = True
        on = phase(run, warmup, "on")
        listener.counting = False
        analyzer.interval()
        counts = {cid: analysed(broker.url, cid) - counts_before[cid] for cid in run.camera_ids}
        listener.stopping.set()
        listener.join(5)
        for cid in run.camera_ids:
            patch(broker.url, cid, {"ai_enabled": False})
        analyzer_cores = analyzer.total()
        duty = min(0.95, analyzer_cores)
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(duty)])
        try:
            load = phase(run, warmup, "load")
        finally:
            busy.kill()
            busy.wait(10)
        seconds = max(2.0, a.duration / 2)
        costs = [detector_cost(run, model, seconds) for model in DETECTORS]
        return {
            "off": off,
            "on": on,
            "load": load,
            "load_duty": duty,
            "analyzer_cores": analyzer_cores,
            "analysed": counts,
            "latencies": listener.latencies,
            "detectors": costs,
        }

    bench, raw, warmup, started = collect(args, execute)
    result = analyse(bench, raw, warmup, started)
    return common.report(result, args.out, "analytics", started, print_report, chart)


def analyse(run: Run, raw: dict[str, Any], warmup: float, started: str) -> dict[str, Any]:
    a = run.args
    off, on, load = per_client(raw["off"]), per_client(raw["on"]), per_client(raw["load"])
    clients = []
    for name in sorted(set(off) & set(on)):
        before, after, control = off[name], on[name], load.get(name, {})
        clients.append(
            {
                "name": name,
                "fps_off": before["fps"],
                "fps_on": after["fps"],
                "fps_ratio": _ratio(after["fps"], before["fps"]),
                "p99_off_ms": before["p99_ms"],
                "p99_on_ms": after["p99_ms"],
                "p99_ratio": _ratio(after["p99_ms"], before["p99_ms"]),
                "p99_load_ms": control.get("p99_ms"),
                "p99_load_ratio": _ratio(control.get("p99_ms"), before["p99_ms"]),
            }
        )
    all_events = [v for values in raw["latencies"].values() for v in values]
    events = {
        kind: {"count": len(values), **common.latency_summary_ms(values)}
        for kind, values in {**raw["latencies"], "all": all_events}.items()
    }
    fps_worst = min((c["fps_ratio"] for c in clients if c["fps_ratio"]), default=None)
    p99_worst = max((c["p99_ratio"] for c in clients if c["p99_ratio"]), default=None)
    load_worst = max((c["p99_load_ratio"] for c in clients if c["p99_load_ratio"]), default=None)
    event_p99 = events["all"]["p99_ms"]
    targets = {
        "fps_ratio": common.target(TARGET_DELIVERED_RATIO, fps_worst, at_least=True, key="worst"),
        "p99_ratio": common.target(TARGET_P99_RATIO, p99_worst, at_least=False, key="worst"),
        "event_p99_ms": common.target(TARGET_EVENT_P99_MS, event_p99, at_least=False, key="worst"),
    }
    return {
        **common.result_head(
            "analytics",
            started,
            f"{a.cameras} cameras x {a.clients} clients, {a.width}x{a.height} {a.fps:g} fps, "
            f"analysis {a.analytics_fps:g} fps (motion on all, face on {run.camera_ids[0]}), "
            f"{a.duration:g} s off and on",
            a,
            (
                "cameras",
                "clients",
                "width",
                "height",
                "fps",
                "quality",
                "analytics_fps",
                "duration",
                "quick",
            ),
            warmup=warmup,
        ),
        "broker": {
            "cores_off": raw["off"]["broker_cores"],
            "cores_on": raw["on"]["broker_cores"],
            "health_on": raw["on"]["health"],
        },
        # The control window: analysis off, a busy loop as heavy as the analyzer.
        "load": {"busy_duty": raw["load_duty"], "p99_ratio_worst": load_worst},
        "analyzer": {"cores_on": raw["analyzer_cores"], "analysed": raw["analysed"]},
        "clients": clients,
        "events": events,
        "detectors": raw["detectors"],
        "targets": targets,
        "samples": run.samples,
    }


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 4) if new is not None and old else None


def print_report(result: dict[str, Any]) -> None:
    rows = [
        [
            c["name"],
            c["fps_off"],
            c["fps_on"],
            c["fps_ratio"],
            c["p99_off_ms"],
            c["p99_on_ms"],
            c["p99_ratio"],
            c["p99_load_ms"],
            c["p99_load_ratio"],
        ]
        for c in result["clients"]
    ]
    headers = ["client", "fps off", "fps on", "ratio", "p99 off ms", "p99 on ms", "ratio"]
    headers += ["p99 load ms", "ratio"]
    print(common.format_table(headers, rows))
    load = result["load"]
    print(
        f"\ncontrol (analysis off, a busy loop at {load['busy_duty']:.2f} of a core): "
        f"worst p99 ratio {common._cell(load['p99_ratio_worst'])}"
    )
    b, an = result["broker"], result["analyzer"]
    print(f"\nbroker: {b['cores_off']:.3f} cores off, {b['cores_on']:.3f} cores on")
    frames = ", ".join(f"{cid} {n}" for cid, n in an["analysed"].items())
    print(f"analyzer: {an['cores_on']:.3f} cores on; frames analysed {frames}")
    print("\nevent latency (capture to /ws):")
    for kind, e in result["events"].items():
        print(f"  {kind:18s} n={e['count']:<5} p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms")
    print("\nanalyzer CPU per analysed frame (camera 0 alone):")
    for d in result["detectors"]:
        print(
            f"  {d['model']:8s} {d['cpu_ms_per_frame']} ms ({d['frames']} frames, {d['fps']} fps)"
        )
    print("\ntargets:")
    for name, t in result["targets"].items():
        op = ">=" if name == "fps_ratio" else "<="
        print(
            f"  {name:13s} worst {common._cell(t['worst']):>8}  {op} {t['limit']:<5g}  "
            f"{common.met(t['met'])}"
        )


def chart(result: dict[str, Any], path: Path) -> None:
    clients = result["clients"]
    x = list(range(len(clients)))
    fig, (fps_ax, lat_ax) = common.new_figure(2, f"analytics {result['title']}")
    fps_ax.bar([i - 0.2 for i in x], [c["fps_off"] or 0 for c in clients], 0.4, label="off")
    fps_ax.bar([i + 0.2 for i in x], [c["fps_on"] or 0 for c in clients], 0.4, label="on")
    fps_ax.set_ylabel("delivered fps")
    fps_ax.legend(loc="lower right")
    lat_ax.bar([i - 0.2 for i in x], [c["p99_off_ms"] or 0 for c in clients], 0.4, label="off")
    lat_ax.bar([i + 0.2 for i in x], [c["p99_on_ms"] or 0 for c in clients], 0.4, label="on")
    lat_ax.set_ylabel("p99 latency ms")
    lat_ax.legend(loc="upper right")
    for ax in (fps_ax, lat_ax):
        ax.set_xticks(x, [c["name"] for c in clients], rotation=90, fontsize=6)
    common.save_figure(fig, path)


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    t = result["targets"]
    return [
        {
            "target": f"every client's fps on/off >= {TARGET_DELIVERED_RATIO:g}",
            "measured": f"worst {common._cell(t['fps_ratio']['worst'])}",
            "met": t["fps_ratio"]["met"],
        },
        {
            "target": f"every client's p99 on/off <= {TARGET_P99_RATIO:g}",
            "measured": f"worst {common._cell(t['p99_ratio']['worst'])}",
            "met": t["p99_ratio"]["met"],
        },
        {
            "target": f"event latency p99 <= {TARGET_EVENT_P99_MS:g} ms",
            "measured": f"{common._cell(t['event_p99_ms']['worst'])} ms",
            "met": t["event_p99_ms"]["met"],
        },
    ]
