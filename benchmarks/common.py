"""Shared pieces of the benchmark scenarios: machine and version info, process CPU and
RSS sampling from /proc, percentiles, progress lines, the results table, JSON and PNG."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
QUICK_WARMUP = 0.5  # seconds; --quick only checks that a scenario works
WARMUP = 2.0
PACKAGES = ("trio", "pyzmq", "trio-websocket", "camera-broker", "msgpack", "opencv-python-headless")


# --- machine and versions -------------------------------------------------------------


def machine_info() -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpuinfo_field("model name"),
        "memory_bytes": _meminfo_kib("MemTotal") * 1024,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "load_average": load_average(),
    }


def result_head(
    scenario: str,
    started: str,
    title: str,
    args: argparse.Namespace,
    keys: tuple[str, ...],
    **parameters: object,
) -> dict[str, object]:
    """The fields every scenario's JSON starts with: what ran, when, with which options
    (``keys`` of ``args``, plus ``parameters``), and on what machine."""
    return {
        "scenario": scenario,
        "started": started,
        "title": title,
        "parameters": {k: getattr(args, k) for k in keys} | parameters,
        "machine": machine_info(),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        import zmq

        found["libzmq"] = zmq.zmq_version()
    except ImportError:
        found["libzmq"] = None
    found["git"] = _git_revision()
    return found


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _meminfo_kib(name: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sysctl(name: str) -> str | None:
    """A kernel setting from /proc/sys, e.g. ``net/ipv4/tcp_rmem``."""
    try:
        return " ".join(Path("/proc/sys", name).read_text().split())
    except OSError:
        return None


def sockstat() -> dict[str, int]:
    """System-wide TCP sockets in use and the kernel memory they hold (pages), from
    /proc/net/sockstat: socket buffers are kernel memory, not in any process's RSS."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                values = line.split()[1:]
                return {k: int(v) for k, v in zip(values[::2], values[1::2], strict=True)}
    except (OSError, ValueError):
        pass
    return {}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine during a run)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# --- process CPU and memory ----------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class CpuMeter:
    """CPU used by a group of processes between `start` and each later reading, in cores."""

    pids: list[int]
    started_wall: float = 0.0
    started_cpu: dict[int, float] = field(default_factory=dict)
    last_wall: float = 0.0
    last_cpu: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started_wall = self.last_wall = time.monotonic()
        self.started_cpu = self._read()
        self.last_cpu = dict(self.started_cpu)

    def _read(self) -> dict[int, float]:
        return {pid: cpu for pid in self.pids if (cpu := cpu_seconds(pid)) is not None}

    def interval(self) -> float:
        """Cores used since the previous call (or `start`)."""
        now, cpu = time.monotonic(), self._read()
        cores = _cores(self.last_cpu, cpu, now - self.last_wall)
        self.last_wall, self.last_cpu = now, cpu
        return cores

    def total(self) -> float:
        """Cores used on average since `start`, as of the last `interval` call."""
        return _cores(self.started_cpu, self.last_cpu, self.last_wall - self.started_wall)


def _cores(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    if seconds <= 0:
        return 0.0
    used = sum(after[pid] - before.get(pid, after[pid]) for pid in after)
    return used / seconds


# --- statistics ----------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile (0..100) with linear interpolation, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(samples: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of latency samples given in seconds, in milliseconds."""
    ordered = sorted(samples)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


# --- targets -------------------------------------------------------------------------


def target(
    limit: float | None,
    measured: float | None,
    *,
    at_least: bool,
    key: str = "value",
    op: bool = False,
    complete: bool = True,
) -> dict[str, Any]:
    """A target as the JSON reports it: ``limit``, the ``measured`` figure under ``key``
    ("value", or "worst" when it is the worst of several) and ``met``: measured >= limit
    (``at_least``) or <= limit; not met when either is None or the run is not
    ``complete`` (say, not every connection reported). ``op`` puts ">=" or "<=" first."""
    ok = (
        complete
        and measured is not None
        and limit is not None
        and (measured >= limit if at_least else measured <= limit)
    )
    head = {"op": ">=" if at_least else "<="} if op else {}
    return {**head, "limit": limit, key: measured, "met": bool(ok)}


# --- output --------------------------------------------------------------------------


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def ratio_text(value: float | None) -> str:
    """A ratio with three decimals (0.899 must not print as a passing 0.90), or "-"."""
    return "-" if value is None else f"{value:.3f}"


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def result_path(out: Path, scenario: str, suffix: str, stamp: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{scenario}-{stamp}.{suffix}"


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def new_figure(rows: int, title: str) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(12, 3.6 * rows), squeeze=False)
    fig.suptitle(title)
    return fig, [row[0] for row in axes]


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(
    result: dict[str, Any],
    out: Path,
    scenario: str,
    started: str,
    print_table: Callable[[dict[str, Any]], None],
    chart: Callable[[dict[str, Any], Path], None],
) -> int:
    """Print a scenario's table, then write its JSON and PNG; the command's exit code."""
    print_table(result)
    json_path = result_path(out, scenario, "json", started)
    write_json(json_path, result)
    png_path = json_path.with_suffix(".png")
    chart(result, png_path)
    print(f"\nwrote {json_path}\nwrote {png_path}")
    return 0
