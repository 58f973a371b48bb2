"""Scenario ``slow-clients``: do slow viewers hurt fast ones?

One broker, C replay publishers and two phases of the same length. Phase "alone": F fast
WebSocket clients per camera. Phase "with slow": the same fast clients plus T readers per
camera throttled to ``--read-rate`` bytes/s and S clients per camera that never read. It
compares the fast clients' fps and p99 between the phases, follows the throttled readers'
lag over time, counts the stalled clients the broker disconnects after ``send_timeout``
(``slow_client_disconnects`` in ``/healthz``) and compares the broker's RSS.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from benchmarks import common
from benchmarks.harness import (
    Run,
    collect,
    measure,
    start_cameras,
    start_clients,
    wait,
)
from benchmarks.harness import write_config as write_camera_config
from benchmarks.procs import Child, get_json

SCENARIO = "slow-clients"
TARGET_FPS_RATIO = 0.99  # fast clients' fps / source fps, with the slow clients
TARGET_P99_RATIO = 1.2  # fast clients' p99 with the slow clients / without
TARGET_LAG_MS = 500.0  # throttled reader's p99 lag
TARGET_LAG_GROWTH_MS = 50.0  # mean lag of the last third minus that of the first third
RSS_ALLOWANCE = 5 * 2**20  # broker RSS beyond (queue depth + 1) x frame size per slow client
PHASES = ("alone", "with_slow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, help="cameras (default 2; --quick 1)")
    p.add_argument("--clients", type=int, help="fast clients per camera (default 4; --quick 2)")
    p.add_argument("--throttled", type=int, help="throttled readers per camera (2; --quick 1)")
    p.add_argument("--stalled", type=int, help="never-reading clients per camera (2; --quick 1)")
    p.add_argument(
        "--read-rate",
        type=float,
        default=1e6,
        metavar="BYTES",
        help="throttled readers' bytes per second (default 1e6)",
    )
    p.add_argument(
        "--send-timeout",
        type=float,
        metavar="SECONDS",
        help="broker server.send_timeout (default 5; --quick 1)",
    )
    p.add_argument("--queue-depth", type=int, default=2, help="broker server.queue_depth (2)")
    p.add_argument(
        "--rcvbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF of the slow clients' sockets (default 0: the kernel's own, "
        "autotuned, as a browser has; 65536 leaves little kernel buffer to "
        "hide behind)",
    )
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="processes sharing the fast connections (default 2)",
    )


def _defaults(a: argparse.Namespace) -> None:
    for name, normal, quick in (
        ("cameras", 2, 1),
        ("clients", 4, 2),
        ("throttled", 2, 1),
        ("stalled", 2, 1),
        ("send_timeout", 5.0, 1.0),
    ):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else normal)


def write_config(run: Run) -> Path:
    server = f"send_timeout = {run.args.send_timeout}\nqueue_depth = {run.args.queue_depth}\n"
    return write_camera_config(run, f"[server]\n{server}")


class HealthPoller:
    """``slow_client_disconnects`` from ``/healthz`` twice a second, in a thread."""

    def __init__(self, url: str) -> None:
        self.url, self.stopped = url, threading.Event()
        self.points: list[list[float]] = []
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                count = get_json(self.url, timeout=2)["slow_client_disconnects"]
            except (OSError, ValueError, KeyError):
                continue
            self.points.append([round(time.monotonic() - self.started, 2), count])

    def stop(self) -> list[list[float]]:
        self.stopped.set()
        self.thread.join(5)
        return self.points


def start_slow_clients(run: Run) -> None:
    assert run.broker is not None
    a = run.args
    for mode, count in (("throttled", a.throttled), ("stalled", a.stalled)):
        if count <= 0:
            continue
        argv = [
            "-m",
            "benchmarks.client",
            "--port",
            str(run.broker.port),
            "--mode",
            mode,
            "--name",
            f"{mode}:",
            "--read-rate",
            str(a.read_rate),
            "--rcvbuf",
            str(a.rcvbuf),
        ]
        for cid in run.camera_ids:
            argv += ["--camera", f"{cid}:{count}"]
        child = Child(f"{mode} clients", argv, run.work.path / f"client-{mode}.log")
        run.clients.append(child)
        child.expect(timeout=30)


def phase(run: Run, name: str, warmup: float, slow: bool) -> dict:
    assert run.broker is not None
    run.clients, run.samples = [], []
    start_clients(run)
    poller = None
    if slow:
        before = get_json(run.broker.url + "/healthz")["slow_client_disconnects"]
        start_slow_clients(run)
        poller = HealthPoller(run.broker.url + "/healthz")
    common.progress(f"phase {name}: {len(run.clients)} client processes connected")
    wait(warmup, f"{name} warm-up")
    raw = measure(run)
    raw["samples"] = run.samples
    raw["disconnects_before"] = before if slow else None
    raw["disconnect_timeline"] = poller.stop() if poller else []
    for child in run.clients:
        child.stop()
    run.clients = []
    return raw


def execute(run: Run, warmup: float) -> dict[str, dict]:
    a = run.args
    common.progress(
        f"{SCENARIO}: {a.cameras} cameras, per camera {a.clients} fast + "
        f"{a.throttled} throttled ({a.read_rate:g} B/s) + {a.stalled} stalled "
        f"clients, {a.width}x{a.height} q{a.quality} {a.fps:g} fps, send_timeout "
        f"{a.send_timeout:g} s, slow clients' SO_RCVBUF "
        f"{a.rcvbuf or 'kernel default'}; 2 phases of {warmup:g} + "
        f"{a.duration:g} s"
    )
    broker = start_cameras(run, write_config(run))
    common.progress(f"broker up on port {broker.port}, {len(run.replays)} replays online")
    return {
        "alone": phase(run, "alone", warmup, False),
        "with_slow": phase(run, "with slow", warmup, True),
    }


# --- analysis ------------------------------------------------------------------------


def _connections(raw: dict, mode: str) -> list[dict]:
    found = [
        conn for c in raw["clients"] if c.get("mode", "fast") == mode for conn in c["connections"]
    ]
    for conn in found:
        conn["source_fps"] = raw["replays"][conn["camera"]]["fps"]
        conn["fps_ratio"] = (
            round(conn["fps"] / conn["source_fps"], 4)
            if conn["fps"] and conn["source_fps"]
            else 0.0
        )
    return sorted(found, key=lambda conn: conn["name"])


def _thirds(series: list[list[float]]) -> tuple[float | None, float | None]:
    third = len(series) // 3
    if not third:
        return None, None
    first = sum(v for _, v in series[:third]) / third
    last = sum(v for _, v in series[-third:]) / third
    return round(first, 3), round(last, 3)


def summarise(run: Run, raw: dict) -> dict:
    """One phase: fast and slow clients, their latency, broker figures."""
    fast = _connections(raw, "fast")
    samples = [v for conn in fast for v in conn.pop("latencies_ms")]
    throttled = _connections(raw, "throttled")
    for conn in throttled:
        conn.pop("latencies_ms")
        conn["lag_first_third_ms"], conn["lag_last_third_ms"] = _thirds(conn["lag_series"])
        first, last = conn["lag_first_third_ms"], conn["lag_last_third_ms"]
        conn["lag_growth_ms"] = None if first is None else round(last - first, 3)
    stalled = _connections(raw, "stalled")
    for conn in stalled:
        conn.pop("latencies_ms")
    health = raw["health"]
    before = raw["disconnects_before"]
    return {
        "fast": fast,
        "fast_latency": common.latency_summary_ms([v / 1000 for v in samples]),
        "throttled": throttled,
        "stalled": stalled,
        "sources": raw["replays"],
        "broker": {
            "cores": raw["broker_cores"],
            "rss_bytes": raw["broker_rss_bytes"],
            "peak_rss_bytes": raw["broker_peak_rss_bytes"],
            "health": health,
        },
        "loadgen": {"cores": raw["loadgen_cores"]},
        "slow_client_disconnects": None
        if before is None
        else health["slow_client_disconnects"] - before,
        "disconnect_timeline": raw["disconnect_timeline"],
        "samples": raw["samples"],
    }


def targets(run: Run, phases: dict[str, dict], frame_bytes: float) -> dict[str, dict]:
    a = run.args
    alone, slow = phases["alone"], phases["with_slow"]
    fast_ok = all(len(p["fast"]) == a.cameras * a.clients for p in phases.values())
    throttled = slow["throttled"]
    slow_ok = fast_ok and len(throttled) == a.cameras * a.throttled
    slow_count = a.cameras * (a.throttled + a.stalled)
    p99_alone, p99_slow = alone["fast_latency"]["p99_ms"], slow["fast_latency"]["p99_ms"]
    lags = [c["p99_ms"] for c in throttled]
    growths = [c["lag_growth_ms"] for c in throttled]
    rss_limit = alone["broker"]["peak_rss_bytes"] + (
        (a.queue_depth + 1) * frame_bytes * slow_count + RSS_ALLOWANCE
    )
    found = {
        "fast_fps_ratio": (
            ">=",
            TARGET_FPS_RATIO,
            min((c["fps_ratio"] for c in slow["fast"]), default=0.0),
            fast_ok,
        ),
        "fast_p99_ms": (
            "<=",
            round(p99_alone * TARGET_P99_RATIO, 3) if p99_alone else None,
            p99_slow,
            fast_ok,
        ),
        "throttled_lag_p99_ms": (
            "<=",
            TARGET_LAG_MS,
            None if None in lags or not lags else max(lags),
            slow_ok,
        ),
        "throttled_lag_growth_ms": (
            "<=",
            TARGET_LAG_GROWTH_MS,
            None if None in growths or not growths else max(growths),
            slow_ok,
        ),
        "stalled_disconnected": (
            ">=",
            a.cameras * a.stalled,
            slow["slow_client_disconnects"],
            True,
        ),
        "broker_peak_rss_bytes": ("<=", int(rss_limit), slow["broker"]["peak_rss_bytes"], slow_ok),
    }
    return {
        name: common.target(
            limit, worst, at_least=op == ">=", key="worst", op=True, complete=counted
        )
        for name, (op, limit, worst, counted) in found.items()
    }


# --- output --------------------------------------------------------------------------


def print_report(result: dict) -> None:
    phases = result["phases"]
    by_name = {c["name"]: c for c in phases["alone"]["fast"]}
    rows = []
    for c in phases["with_slow"]["fast"]:
        a = by_name.get(c["name"], {})
        rows.append(
            [
                c["name"],
                a.get("fps"),
                c["fps"],
                a.get("p50_ms"),
                c["p50_ms"],
                a.get("p99_ms"),
                c["p99_ms"],
                c["drops"],
                "closed" if c["closed"] else "",
            ]
        )
    print("fast clients (alone | with slow clients):")
    print(
        common.format_table(
            [
                "client",
                "fps",
                "fps+slow",
                "p50 ms",
                "p50+slow",
                "p99 ms",
                "p99+slow",
                "drops+slow",
                "",
            ],
            rows,
        )
    )
    slow = phases["with_slow"]
    rows = [
        [
            c["name"],
            c["frames"],
            c["fps"],
            c["p50_ms"],
            c["p99_ms"],
            c["max_ms"],
            c["lag_first_third_ms"],
            c["lag_last_third_ms"],
            "closed" if c["closed"] else "",
        ]
        for c in slow["throttled"]
    ]
    print(
        f"\nthrottled readers ({result['parameters']['read_rate']:g} B/s), lag = receipt of "
        f"the frame's last byte minus capture:"
    )
    print(
        common.format_table(
            [
                "client",
                "frames",
                "fps",
                "p50 ms",
                "p99 ms",
                "max ms",
                "1st third",
                "last third",
                "",
            ],
            rows,
        )
    )
    print(
        f"\nframe size {result['frame_bytes'] / 1024:.0f} KiB; source fps: "
        + ", ".join(f"{cid} {r['fps']}" for cid, r in slow["sources"].items())
    )
    for name in PHASES:
        p = phases[name]
        b, lat = p["broker"], p["fast_latency"]
        print(
            f"{name:9s}: fast p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms | broker "
            f"{b['cores']:.3f} cores, RSS {b['rss_bytes'] / 2**20:.1f} MiB (peak "
            f"{b['peak_rss_bytes'] / 2**20:.1f}) | load generators {p['loadgen']['cores']:.3f}"
            f" cores"
        )
    stalled = len(slow["stalled"])
    timeline = slow["disconnect_timeline"]
    base = slow["broker"]["health"]["slow_client_disconnects"] - slow["slow_client_disconnects"]
    seen = next((t for t, n in timeline if n - base >= stalled), None) if stalled else None
    print(
        f"stalled clients: {stalled}; broker slow_client_disconnects in the phase "
        f"{slow['slow_client_disconnects']} (send_timeout "
        f"{result['parameters']['send_timeout']:g} s; all seen "
        f"{'-' if seen is None else f'{seen:g} s'} after they connected)"
    )
    print("\ntargets:")
    for name, t in result["targets"].items():
        worst, limit = t["worst"], t["limit"]
        if name.endswith("bytes"):
            worst = None if worst is None else f"{worst / 2**20:.1f}M"
            limit = None if limit is None else f"{limit / 2**20:.1f}M"
        print(
            f"  {name:24s} worst {common._cell(worst):>8}  {t['op']} "
            f"{common._cell(limit):<8}  {common.met(t['met'])}"
        )


def chart(result: dict, path: Path) -> None:
    phases = result["phases"]
    fig, (lat_ax, lag_ax, rss_ax, disc_ax) = common.new_figure(4, f"{SCENARIO} {result['title']}")
    fast = phases["with_slow"]["fast"]
    alone = {c["name"]: c for c in phases["alone"]["fast"]}
    x = list(range(len(fast)))
    lat_ax.bar(
        [i - 0.2 for i in x],
        [alone.get(c["name"], {}).get("p99_ms") or 0 for c in fast],
        width=0.4,
        label="p99 alone",
    )
    lat_ax.bar(
        [i + 0.2 for i in x],
        [c["p99_ms"] or 0 for c in fast],
        width=0.4,
        label="p99 with slow clients",
    )
    limit = result["targets"]["fast_p99_ms"]["limit"]
    if limit:
        lat_ax.axhline(limit, color="tab:red", ls="--", lw=1, label="1.2 x p99 alone")
    lat_ax.set_xticks(x, [c["name"] for c in fast], rotation=90, fontsize=6)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("fast clients' p99 ms")
    lat_ax.legend(loc="upper right")
    for c in phases["with_slow"]["throttled"]:
        series = c["lag_series"]
        lag_ax.plot([t for t, _ in series], [v for _, v in series], lw=1, label=c["name"])
    lag_ax.axhline(TARGET_LAG_MS, color="tab:red", ls="--", lw=1)
    lag_ax.set_xlabel("s")
    lag_ax.set_ylabel("throttled readers' lag ms")
    lag_ax.legend(loc="upper right", fontsize=7)
    for name in PHASES:
        samples = phases[name]["samples"]
        rss_ax.plot(
            [s["t"] for s in samples],
            [s["broker_rss_bytes"] / 2**20 for s in samples],
            label=f"broker RSS, {name}",
        )
    rss_ax.axhline(
        result["targets"]["broker_peak_rss_bytes"]["limit"] / 2**20,
        color="tab:red",
        ls="--",
        lw=1,
        label="RSS limit",
    )
    rss_ax.set_xlabel("s")
    rss_ax.set_ylabel("MiB")
    rss_ax.legend(loc="lower right")
    timeline = phases["with_slow"]["disconnect_timeline"]
    disc_ax.step([t for t, _ in timeline], [n for _, n in timeline], where="post")
    disc_ax.axvline(
        result["parameters"]["send_timeout"], color="tab:red", ls="--", lw=1, label="send_timeout"
    )
    disc_ax.set_xlabel("s since the slow clients connected")
    disc_ax.set_ylabel("slow_client_disconnects")
    disc_ax.legend(loc="lower right")
    common.save_figure(fig, path)


def headline(result: dict) -> list[dict]:
    """The targets as rows of the suite's summary (``python -m benchmarks all``)."""
    t = result["targets"]
    rcvbuf = result["parameters"]["slow_rcvbuf"]
    texts = {
        "fast_fps_ratio": f"fast clients >= {TARGET_FPS_RATIO:.0%} of the source fps with slow "
        "clients",
        "fast_p99_ms": f"fast p99 with slow clients <= {TARGET_P99_RATIO:g} x alone",
        "throttled_lag_p99_ms": f"1 MB/s reader's p99 lag <= {TARGET_LAG_MS:g} ms "
        f"(SO_RCVBUF {rcvbuf})",
        "throttled_lag_growth_ms": f"its lag does not grow (<= {TARGET_LAG_GROWTH_MS:g} ms)",
        "stalled_disconnected": "stalled clients disconnected after send_timeout",
        "broker_peak_rss_bytes": "broker RSS <= alone + (depth + 1) x frame x slow + 5 MiB",
    }
    alone = result["phases"]["alone"]["fast_latency"]["p99_ms"]
    rows = []
    for name, text in texts.items():
        worst, limit = t[name]["worst"], t[name]["limit"]
        if name.endswith("bytes"):
            measured = f"{_mib(worst)} MiB (limit {_mib(limit)})"
        elif name == "fast_p99_ms":
            ratio = f"{worst / alone:.2f}x" if worst and alone else "-"
            measured = f"{common._cell(worst)} ms vs {common._cell(alone)} ms alone ({ratio})"
        else:
            measured = f"{common._cell(worst)} (limit {common._cell(limit)})"
        rows.append({"target": text, "measured": measured, "met": t[name]["met"]})
    return rows


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def run(args: argparse.Namespace) -> int:
    _defaults(args)
    bench, raw, warmup, started = collect(args, execute)
    phases = {name: summarise(bench, raw[name]) for name in PHASES}
    fast = phases["alone"]["fast"]
    frame_bytes = sum(c["bytes"] for c in fast) / max(1, sum(c["frames"] for c in fast))
    a = args
    result = {
        **common.result_head(
            SCENARIO,
            started,
            f"{a.cameras} cameras x ({a.clients} fast + {a.throttled} throttled + "
            f"{a.stalled} stalled), {a.width}x{a.height} q{a.quality} {a.fps:g} fps, "
            f"2 x {a.duration:g} s, slow clients' SO_RCVBUF {a.rcvbuf or 'kernel default'}",
            a,
            (
                "cameras",
                "clients",
                "throttled",
                "stalled",
                "read_rate",
                "send_timeout",
                "queue_depth",
                "width",
                "height",
                "fps",
                "quality",
                "client_procs",
                "duration",
                "quick",
            ),
            warmup=warmup,
            slow_rcvbuf=a.rcvbuf or "kernel default",
            tcp_rmem=common.sysctl("net/ipv4/tcp_rmem"),
        ),
        "frame_bytes": round(frame_bytes),
        "phases": phases,
    }
    result["targets"] = targets(bench, phases, frame_bytes)
    return common.report(result, args.out, SCENARIO, started, print_report, chart)
