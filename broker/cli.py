"""The ``broker`` command: ``broker run CONFIG``, ``broker check CONFIG``,
``broker grafana CONFIG``, ``broker tls-selfsigned``, ``broker keys ...`` (camera keys),
``broker share CAMERA`` (links with a signed token) and ``broker ctl ...`` (a client of a
running broker)."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
from pathlib import Path

import trio
import zmq

from broker import config as configuration
from broker import ctl, grafana, share
from broker.app import Broker
from broker.trust import keys
from broker.trust.tokens import RedactingFilter

log = logging.getLogger("broker")

LOG_LEVELS = ("debug", "info", "warning", "error")


def main(argv: list[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    if args.command == "ctl":
        return ctl.run(args, root)
    if args.command == "tls-selfsigned":
        return tls_selfsigned(args.host, Path(args.out), args.days, args.force)
    if args.command == "keys":
        return keys.run(args)
    if args.command == "share" and not args.config:
        root.error("share: --config FILE is needed (or set CAMERA_BROKER_CONFIG)")
    try:
        config = configuration.load(args.config)
    except configuration.ConfigError as exc:
        print(f"{args.config}: {len(exc.errors)} error(s)", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    problem = keys_problem(config)
    if problem is not None:
        print(f"{args.config}: 1 error(s)\n  security.keys_dir: {problem}", file=sys.stderr)
        return 2
    if args.command == "check":
        print("ok")
        return 0
    if args.command == "grafana":
        return grafana.run(config, args.public_url, args.out)
    if args.command == "share":
        return share.run(config, args.camera, args.role, args.ttl, args.public_url, args.json)
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
        trio.run(serve, config, args.log_level, str(Path(args.config).resolve()))
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


def tls_selfsigned(hosts: list[str], out: Path, days: int, force: bool) -> int:
    """Write OUT/cert.pem and OUT/key.pem for ``hosts``; print how to use and trust them."""
    from broker.trust import selfsigned  # cryptography: loaded only for this command

    try:
        made = selfsigned.generate(hosts, days)
        cert, key = selfsigned.write(made, out, force)
    except (ValueError, OSError) as exc:
        print(f"tls-selfsigned: {exc}", file=sys.stderr)
        return 2
    print(selfsigned.instructions(made, cert, key, hosts), end="")
    return 0


def keys_problem(config: configuration.Config) -> str | None:
    """What makes ``security.keys_dir`` unusable (no broker key pair, a secret others
    can read), or None."""
    if not config.security.keys_dir:
        return None
    folder = Path(config.security.keys_dir)
    try:
        keys.load_secret(keys.broker_secret(folder))
        keys.load_public(keys.broker_public(folder))
    except keys.KeyFileError as exc:
        return f"{exc} (make the broker's keys with `broker keys init --dir {folder}`)"
    return None


def _with_listen(path: str, listen: str) -> dict[str, object]:
    import tomllib

    with open(path, "rb") as file:
        data = tomllib.load(file)
    data.setdefault("server", {})["listen"] = listen
    return data


async def serve(
    config: configuration.Config, log_level: str = "info", config_file: str = ""
) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down in order."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Broker(config, log_level, config_file).run)
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
    for handler in logging.getLogger().handlers:  # no token in any line, whoever logs it
        handler.addFilter(RedactingFilter())


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
    selfsigned = commands.add_parser(
        "tls-selfsigned",
        help="write a self-signed certificate and key (DIR/cert.pem, DIR/key.pem) for https",
    )
    selfsigned.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME",
        help="a host name or IP address clients use to reach the broker (repeat for each)",
    )
    selfsigned.add_argument("--out", required=True, metavar="DIR", help="output folder")
    selfsigned.add_argument(
        "--days", type=int, default=825, help="validity in days (825, the most Apple accepts)"
    )
    selfsigned.add_argument("--force", action="store_true", help="replace existing files")
    keys.add_parser(commands)
    sharing = commands.add_parser(
        "share", help="print links to one camera carrying a fresh signed token"
    )
    sharing.add_argument("camera", help="the camera id")
    sharing.add_argument(
        "--config",
        default=os.environ.get("CAMERA_BROKER_CONFIG"),
        metavar="FILE",
        help="the broker's TOML config (default: $CAMERA_BROKER_CONFIG)",
    )
    sharing.add_argument("--role", choices=configuration.ROLES, default="viewer")
    sharing.add_argument(
        "--ttl", default="8h", help="how long the links work: 30m, 8h, 7d... (default 8h)"
    )
    sharing.add_argument(
        "--public-url",
        help="the broker as viewers reach it, http(s)://HOST:PORT (default: server.listen)",
    )
    sharing.add_argument("--json", action="store_true", help="print the links as JSON")
    ctl.add_parser(commands)
    return root


__all__ = ["main"]
