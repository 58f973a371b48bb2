"""``broker ctl``: an operator's command line on top of `broker.client`.

    broker ctl --url ws://host:8765/ws list
    broker ctl --url ws://host:8765/ws status front
    broker ctl --url ws://host:8765/ws set front brightness=60 auto_exposure=false
    broker ctl --url ws://host:8765/ws preset front night
    broker ctl --url ws://host:8765/ws watch front --frames 10

Everything goes over ``/ws``. Exit codes: 0 done, 1 the command failed (refused,
invalid, timed out), 2 usage, connection or token errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import trio

from broker import client as broker_client
from broker.client import (
    BrokerError,
    CommandResult,
    ConnectError,
    ConnectionLost,
    Frame,
    RequestTimeout,
)
from broker.protocol.results import http_status

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
AUTH_CODES = ("unauthorized", "forbidden")
OK, FAILED, USAGE = 0, 1, 2


class CtlError(Exception):
    """A failure to report on stderr, with the exit code it means."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- arguments ---------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add ``ctl`` and its sub-commands to the ``broker`` parser's sub-commands."""
    # The common options are accepted before and after the sub-command; SUPPRESS keeps
    # a sub-command's absent option from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, suppress=True)
    ctl = commands.add_parser(
        "ctl",
        help="watch and control a running broker",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The token may also come from CAMERA_BROKER_TOKEN, the URL from CAMERA_BROKER_URL.",
    )
    _common_options(ctl, suppress=False)
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="list the cameras")
    status = actions.add_parser("status", parents=[common], help="a camera's current settings")
    status.add_argument("camera")
    change = actions.add_parser(
        "set", parents=[common], help="change settings: key=value (JSON values: 60, true, 12.5)"
    )
    change.add_argument("camera")
    change.add_argument("settings", nargs="+", metavar="key=value")
    preset = actions.add_parser("preset", parents=[common], help="apply a named preset")
    preset.add_argument("camera")
    preset.add_argument("name")
    watch = actions.add_parser("watch", parents=[common], help="print a line per frame and event")
    watch.add_argument("camera")
    watch.add_argument("--frames", type=int, metavar="N", help="stop after N frames")
    watch.add_argument("--max-fps", type=float, metavar="F", help="at most F frames a second")


def _common_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--url",
        default=default(os.environ.get("CAMERA_BROKER_URL", DEFAULT_URL)),
        help=f"the broker's /ws (default {DEFAULT_URL}); http:// works too",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("CAMERA_BROKER_TOKEN")),
        help="bearer token (default: $CAMERA_BROKER_TOKEN)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(10.0),
        help="seconds to wait for the broker (default 10)",
    )


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["brightness=60", "name=Front door"]`` → ``{"brightness": 60, "name": "Front door"}``:
    a value is JSON when it parses as JSON, else a string. ValueError names a bad pair."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


def ws_url(url: str) -> str:
    """The ``/ws`` URL from what the user gave: http(s) becomes ws(s), no path means /ws."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws://, wss://, http:// or https:// URL, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def http_url(url: str, path: str) -> str:
    """``path`` on the host and port of the ``/ws`` URL ``url``, over http(s)."""
    parts = urlsplit(url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, path, "", ""))


def url_token(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get("token")
    return values[-1] if values else None


# -- running -----------------------------------------------------------------------


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        args.url = ws_url(args.url)
        changes = parse_settings(args.settings) if args.action == "set" else {}
    except ValueError as exc:
        parser.error(str(exc))  # exits with 2
    args.token = args.token or url_token(args.url)
    try:
        return trio.run(_ws_action, args, changes)
    except CtlError as exc:
        print(f"broker ctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return OK  # the way to stop `watch`


async def _ws_action(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    options = {
        "request_timeout": args.timeout,
        "connect_timeout": args.timeout,
        "reconnect": args.action == "watch",
    }
    try:
        async with broker_client.connect(args.url, args.token, **options) as client:
            if args.action == "list":
                cameras = await client.list_cameras()
                print(json.dumps(cameras, indent=2) if args.json else camera_table(cameras))
                return OK
            if args.action == "watch":
                return await watch(client, args)
            if args.action == "status":
                result = await client.command(args.camera, "get_status")
            elif args.action == "preset":
                result = await client.apply_preset(args.camera, args.name)
            else:
                result = await client.command(args.camera, "update_settings", changes)
            return show_result(result, args.json)
    except ConnectError as exc:  # AuthError included: 401/403 at the handshake
        raise CtlError(exc.message, USAGE) from None
    except ConnectionLost as exc:
        raise CtlError(f"{exc.message} ({args.url})", USAGE) from None
    except RequestTimeout as exc:
        raise CtlError(exc.message, FAILED) from None
    except BrokerError as exc:  # the broker refused the request: say with what
        refusal = f"{exc.code} ({http_status(exc.code)}): {exc.message}"
        raise CtlError(refusal, USAGE if exc.code in AUTH_CODES else FAILED) from None


async def watch(client: broker_client.Client, args: argparse.Namespace) -> int:
    def on_event(message: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(message), flush=True)
        else:
            print(f"event {message.get('event')} {message.get('camera', '')}", flush=True)

    def on_connection(message: dict[str, Any]) -> None:
        what = "reconnected" if message["type"] == "connected" else "connection lost"
        print(f"broker ctl: {what} ({client.url})", file=sys.stderr, flush=True)

    client.on("event", on_event)
    client.on("disconnected", on_connection)
    client.on("connected", on_connection)
    await client.subscribe(args.camera, args.max_fps)
    count = 0
    async for frame in client.frames(args.camera):
        print(json.dumps(frame_summary(frame)) if args.json else frame_line(frame), flush=True)
        count += 1
        if args.frames is not None and count >= args.frames:
            break
    stats = client.stats
    print(
        f"{count} frames; {stats.drops} not seen ({stats.dropped} dropped here, "
        f"{stats.gaps} missing in sequence); {stats.reconnects} reconnects",
        file=sys.stderr,
    )
    return OK


# -- output ------------------------------------------------------------------------


def show_result(result: CommandResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return OK if result.success else FAILED
    if result.success:
        print(f"{result.camera}: {result.message}" if result.message else f"{result.camera}: ok")
        for key, value in result.settings.items():
            print(f"  {key} = {json.dumps(value)}")
        return OK
    print(f"{result.camera}: failed ({result.error or 'error'}): {result.message}", file=sys.stderr)
    for key, problem in (result.errors or {}).items():
        print(f"  {key}: {problem}", file=sys.stderr)
    return FAILED


def camera_table(cameras: list[dict[str, Any]]) -> str:
    if not cameras:
        return "no cameras"
    rows = [("ID", "NAME", "ONLINE", "FPS", "SIZE", "FORMAT", "CLIENTS")]
    for camera in cameras:
        fps = camera.get("fps")
        rows.append(
            (
                str(camera.get("id", "")),
                str(camera.get("name", "")),
                "yes" if camera.get("online") else "no",
                f"{fps:.1f}" if isinstance(fps, int | float) else "-",
                f"{camera.get('width', '?')}x{camera.get('height', '?')}",
                str(camera.get("format", "-")),
                str(camera.get("clients", "-")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def frame_summary(frame: Frame) -> dict[str, Any]:
    return {
        "camera": frame.camera,
        "seq": frame.seq,
        "captured_at": frame.captured_at,
        "format": frame.format,
        "width": frame.width,
        "height": frame.height,
        "bytes": len(frame.data),
        "latency_ms": round(frame.latency * 1000, 1),
        "placeholder": frame.placeholder,
    }


def frame_line(frame: Frame) -> str:
    captured = time.strftime("%H:%M:%S", time.localtime(frame.captured_at))
    note = " (no data)" if frame.placeholder else ""
    return (
        f"{frame.camera} seq={frame.seq} {frame.width}x{frame.height} {frame.format} "
        f"{len(frame.data) / 1024:.1f} KiB captured {captured} "
        f"latency {frame.latency * 1000:.0f} ms{note}"
    )
