"""``python -m benchmarks SCENARIO [options]``: run one benchmark scenario.

Each run starts the real broker, replay publishers and client processes on loopback,
shows progress on stderr, prints a results table and writes ``SCENARIO-TIME.json`` and
``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import fanout, ingest, slow_clients, worker

SCENARIOS = {"fanout": fanout}
SCENARIOS["slow-clients"] = slow_clients
SCENARIOS["ingest"] = ingest
SCENARIOS["worker"] = worker
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
        s = sub.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__)
        quick = f"a short run ({QUICK_SECONDS:g} s) that only checks it works"
        s.add_argument("--quick", action="store_true", help=quick)
        duration = f"measured seconds, after the warm-up (default {DEFAULT_SECONDS:g})"
        s.add_argument("--duration", type=positive, metavar="SECONDS", help=duration)
        s.add_argument("--out", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                       help="where the JSON and PNG go (default benchmarks/results)")  # fmt: skip
        module.add_arguments(s)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    return SCENARIOS[args.scenario].run(args)


if __name__ == "__main__":
    sys.exit(main())
