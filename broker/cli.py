"""The ``broker`` command: ``broker run CONFIG``, ``broker check CONFIG``,
``broker grafana CONFIG`` and ``broker ctl ...`` (a client of a running broker)."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from pathlib import Path

import trio
import zmq

from broker import config as configuration
from broker import ctl, grafana
from broker.app import Broker

log = logging.getLogger("broker")

LOG_LEVELS = ("debug", "info", "warning", "error")


def main(argv: list[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    if args.command == "ctl":
        return ctl.run(args, root)
    try:
        config = configuration.load(args.config)
    except configuration.ConfigError as exc:
        print(f"{args.config}: {len(exc.errors)} error(s)", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    if args.command == "check":
        print("ok")
        return 0
    if args.command == "grafana":
        return grafana.run(config, args.public_url, args.out)
    if args.listen:
        try:
            config = configuration.from_dict(
                _with_listen(args.config, args.listen), Path(args.config).resolve().parent
            )
        except configuration.ConfigError as exc:
            print(f"--listen: {exc}", file=sys.stderr)
            return 2
    configure_logging(args.log_level)
    raise_open_files_limit()
    try:
        trio.run(serve, config, args.log_level)
    except BaseExceptionGroup as group:
        startup, other = group.split((OSError, zmq.ZMQError))
        if startup is None or other is not None:
            raise
        first: BaseException = startup
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        log.error("cannot start: %s", first)
        return 1
    return 0


def _with_listen(path: str, listen: str) -> dict[str, object]:
    import tomllib

    with open(path, "rb") as file:
        data = tomllib.load(file)
    data.setdefault("server", {})["listen"] = listen
    return data


async def serve(config: configuration.Config, log_level: str = "info") -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down in order."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Broker(config, log_level).run)
            if not config.cameras:
                log.warning("no cameras configured")
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def raise_open_files_limit() -> None:
    """Every viewer is a socket: take the hard limit on open files (often 1,024 soft
    against 500,000 hard), so thousands of viewers do not meet EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
        return
    log.debug("open-files limit raised from %d to %d", soft, hard)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="broker", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the broker and its camera workers")
    run.add_argument("config", help="TOML config file (see config/example.toml)")
    run.add_argument("--listen", metavar="HOST:PORT", help="override server.listen")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    check = commands.add_parser("check", help="validate a config: prints ok or every error")
    check.add_argument("config")
    dashboards = commands.add_parser("grafana", help="write Grafana dashboards for a config")
    dashboards.add_argument("config")
    dashboards.add_argument(
        "--public-url", required=True, help="the broker as browsers reach it: http://HOST:8765"
    )
    dashboards.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ctl.add_parser(commands)
    return root


__all__ = ["main"]
