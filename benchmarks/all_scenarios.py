"""Scenario ``all``: every scenario in turn, then one summary of every target.

Runs fanout, mjpeg, saturation, slow-clients, connections, ingest and worker one after the
other (each with its own defaults, or ``--quick``; ``--duration`` is passed on only when
given), each writing its JSON and PNG into ``--out``. A scenario that fails is recorded
and the next one runs. Then writes ``OUT/summary.md``: the machine, the versions, the load
average before and after, one results table (scenario, target, measured, met) ready for
the README's "Performance" section, the saturation chart and the command that
reproduces it; and ``OUT/summary.json`` with the same rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import common

ORDER = ("fanout", "mjpeg", "saturation", "slow-clients", "connections", "ingest", "worker")


def names(text: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ORDER]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ORDER)}; got {text!r}")
    return chosen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        type=names,
        metavar="NAME,...",
        help=f"run only these scenarios (default all: {','.join(ORDER)})",
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.suite import SCENARIOS, parse

    chosen = [n for n in ORDER if n in (args.only or ORDER)]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y%m%d-%H%M%S")
    load_before = common.load_average()
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    for name in chosen:
        argv = [name, "--out", str(out)] + (["--quick"] if args.quick else [])
        if args.duration_given:
            argv += ["--duration", f"{args.duration:g}"]
        common.progress(
            f"all: {name} ({len(runs) + 1}/{len(chosen)}): python -m benchmarks {shlex.join(argv)}"
        )
        before = set(out.glob(f"{name}-*.json"))
        entry: dict[str, Any] = {"scenario": name, "command": _command(argv)}
        began = time.monotonic()
        try:
            code = SCENARIOS[name].run(parse(argv))
        except Exception as exc:  # one broken scenario must not stop the others
            traceback.print_exc()
            code, entry["error"] = 1, f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.monotonic() - began, 1)
        new = sorted(set(out.glob(f"{name}-*.json")) - before)
        entry["exit_code"] = code
        if code == 0 and new:
            result = json.loads(new[-1].read_text())
            entry.update(
                json=new[-1].name,
                png=new[-1].with_suffix(".png").name,
                title=result.get("title", ""),
                rows=SCENARIOS[name].headline(result),
            )
        runs.append(entry)
        print(flush=True)
    summary = {
        "started": started,
        "quick": args.quick,
        "seconds": round(time.monotonic() - t0, 1),
        "command": _command(
            ["all"]
            + (["--quick"] if args.quick else [])
            + (["--duration", f"{args.duration:g}"] if args.duration_given else [])
        ),
        "machine": common.machine_info() | {"load_average_before": load_before},
        "versions": common.versions(),
        "runs": runs,
    }
    common.write_json(out / "summary.json", summary)
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out / 'summary.md'}\nwrote {out / 'summary.json'}")
    failed = [r["scenario"] for r in runs if r["exit_code"] != 0]
    if failed:
        common.progress(f"all: failed: {', '.join(failed)}")
    return 1 if failed else 0


def _command(argv: list[str]) -> str:
    return "python -m benchmarks " + shlex.join(argv)


def markdown(summary: dict[str, Any]) -> str:
    m, v = summary["machine"], summary["versions"]
    memory = f"{m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else "?"
    before = ", ".join(f"{x:g}" for x in m.get("load_average_before", []))
    after = ", ".join(f"{x:g}" for x in m.get("load_average", []))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d', time.strptime(summary['started'], '%Y%m%d-%H%M%S'))}"
        f" on {m['cores']} cores ({m.get('cpu_model') or 'unknown CPU'}), {memory}, Linux "
        f"{m.get('kernel')}; load average (1, 5, 15 min) {before or '?'} before and "
        f"{after or '?'} after the run of {summary['seconds'] / 60:.0f} min.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
    ]
    if summary["quick"]:
        lines += [
            "**A `--quick` run: it only shows the suite works; its figures mean nothing.**",
            "",
        ]
    lines += ["| scenario | target | measured | met |", "| --- | --- | --- | --- |"]
    for r in summary["runs"]:
        if "rows" not in r:
            why = r.get("error") or f"exit code {r['exit_code']}"
            lines.append(f"| {r['scenario']} | - | failed: {_cell(why)} | - |")
            continue
        for i, row in enumerate(r["rows"]):
            name = r["scenario"] if i == 0 else ""
            lines.append(
                f"| {name} | {_cell(row['target'])} | {_cell(row['measured'])} | "
                f"{'met' if row['met'] else '**not met**'} |"
            )
    lines += ["", "Runs (each scenario's JSON and PNG are beside this file):", ""]
    for r in summary["runs"]:
        detail = f"{r.get('title', '')}; `{r.get('json', '-')}`" if "json" in r else "failed"
        lines.append(f"- `{r['command']}` ({r['seconds']:.0f} s): {detail}")
    saturation = next(
        (r for r in summary["runs"] if r["scenario"] == "saturation" and "png" in r), None
    )
    if saturation:
        lines += [
            "",
            f"![saturation: egress vs load, broker and plain send_all]({saturation['png']})",
        ]
    lines += [
        "",
        f"Reproduce: `{summary['command']}` from the repository root "
        f"(`.venv/bin/pip install matplotlib` first).",
        "",
    ]
    return "\n".join(lines)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
