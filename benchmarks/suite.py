"""``python -m benchmarks SCENARIO [options]``: run one benchmark scenario, or ``all``.

Each run starts the real broker, replay publishers and client processes on loopback,
shows progress on stderr, prints a results table and writes ``SCENARIO-TIME.json`` and
``.png`` into ``--out``. A scenario module provides ``add_arguments(parser)``,
``run(args) -> exit code``, ``headline(result)`` (its targets as summary rows) and may set
``DEFAULT_SECONDS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import (
    all_scenarios,
    analytics,
    connections,
    fanout,
    fourk,
    ingest,
    mjpeg,
    saturation,
    slow_clients,
    soak,
    tls,
    worker,
)

SCENARIOS = {
    "fanout": fanout,
    "mjpeg": mjpeg,
    "saturation": saturation,
    "slow-clients": slow_clients,
    "connections": connections,
    "ingest": ingest,
    "worker": worker,
    "soak": soak,  # not in "all": it runs for minutes by design
    "tls": tls,  # not in "all": a second broker and minutes of steps
    "4k": fourk,  # not in "all": minutes of a loaded machine (issue 12)
    "analytics": analytics,  # not in "all" yet: an analyzer process and two windows
    "all": all_scenarios,
}
QUICK_SECONDS = 3.0
DEFAULT_SECONDS = 20.0


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in SCENARIOS.items():
        doc = module.__doc__ or ""
        s = sub.add_parser(name, help=doc.split("\n")[0], description=module.__doc__)
        quick = f"a short run ({QUICK_SECONDS:g} s) that only checks it works"
        s.add_argument("--quick", action="store_true", help=quick)
        seconds = getattr(module, "DEFAULT_SECONDS", DEFAULT_SECONDS)
        duration = f"measured seconds, after the warm-up (default {seconds:g})"
        s.add_argument("--duration", type=positive, metavar="SECONDS", help=duration)
        s.add_argument(
            "--out",
            type=Path,
            default=Path("benchmarks/results"),
            metavar="DIR",
            help="where the JSON and PNG go (default benchmarks/results)",
        )
        module.add_arguments(s)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.duration_given = args.duration is not None
    if args.duration is None:
        seconds = getattr(SCENARIOS[args.scenario], "DEFAULT_SECONDS", DEFAULT_SECONDS)
        args.duration = QUICK_SECONDS if args.quick else seconds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return SCENARIOS[args.scenario].run(args)


if __name__ == "__main__":
    sys.exit(main())
