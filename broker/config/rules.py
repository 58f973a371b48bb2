"""The arrays of tables (cameras with their schedules, presets, tokens) and the rules
that relate fields: a delay cap under its delay, ids that must be unique or configured,
timeouts that must outlast two heartbeats.

A rule is skipped when a field it relates is already wrong: comparing against a bad
value would only add noise to the messages.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
from pathlib import Path
from typing import Any

from broker.config.engine import Problems, check_unique, tables, unknown
from broker.config.fields import SPECS
from broker.config.model import (
    CameraConfig,
    ControlConfig,
    IngestConfig,
    ScheduleEntry,
    TokenConfig,
    WorkersConfig,
    is_loopback,
)
from broker.config.show import key, show, typed
from broker.protocol import settings as camera_settings
from broker.protocol.wire import CAMERA_ID
from broker.trust.tokens import KeyFileError, read_jwks, read_secret

_SCHEDULE_ENTRY = '{at = "HH:MM", preset = "NAME"}'

# With slots, the classes' attributes are not the defaults: instances are.
_CONTROL, _INGEST, _WORKERS = ControlConfig(), IngestConfig(), WorkersConfig()

# --- cameras, presets and tokens ---


def cameras(
    data: Any, presets: dict[str, dict[str, Any]], problems: Problems
) -> tuple[list[dict[str, Any]], set[str]]:
    """The valid cameras' values, and every id given (valid or not)."""
    found = tables(CameraConfig, SPECS[CameraConfig], data, "cameras", problems)
    for i, camera in enumerate(found):
        if camera.get("source") and camera.get("device", "") != "":
            problems.add(f"cameras[{i}]", "must not set both source and device")
        if "schedule" in camera:
            camera["schedule"] = schedule(camera["schedule"], presets, i, problems)
    ids = [(f"cameras[{i}].id", c["id"]) for i, c in enumerate(found) if "id" in c]
    check_unique(ids, "camera id", problems)
    given = {c["id"] for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)}
    return found, given


def schedule(
    data: Any, presets: dict[str, dict[str, Any]], camera: int, problems: Problems
) -> tuple[ScheduleEntry, ...]:
    path = f"cameras[{camera}].schedule"
    if not isinstance(data, list):
        problems.add(path, f"must be an array of {_SCHEDULE_ENTRY}, got {typed(data)}")
        return ()
    entries = []
    for i, entry in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.add(where, f"must be a table {_SCHEDULE_ENTRY}, got {typed(entry)}")
            continue
        for name in entry.keys() - {"at", "preset"}:
            problems.add(f"{where}.{key(name)}", unknown(name, ["at", "preset"]))
        at, preset = _time_of_day(entry.get("at")), entry.get("preset")
        if at is None:
            shown = typed(entry["at"]) if "at" in entry else "nothing"
            problems.add(f"{where}.at", f'must be a time of day such as "07:30", got {shown}')
        if preset not in presets:
            known = ", ".join(presets) if presets else "there are none"
            shown = show(preset) if "preset" in entry else "nothing"
            problems.add(f"{where}.preset", f"must name a preset ({known}), got {shown}")
        if at is not None and preset in presets:
            entries.append(ScheduleEntry(at, preset))
    return tuple(entries)


def _time_of_day(value: Any) -> dt.time | None:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        hour, minute, second, *_ = [int(part) for part in value.split(":")] + [0]
        try:
            return dt.time(hour, minute, second)
        except ValueError:
            return None
    return None


def presets(data: Any, problems: Problems) -> dict[str, dict[str, Any]]:
    """``[presets.NAME]`` tables of camera settings, each checked like a settings change."""
    if not isinstance(data, dict):
        problems.add("presets", f"must be a table of [presets.NAME] tables, got {typed(data)}")
        return {}
    found = {}
    for name, settings in data.items():
        path = f"presets.{key(name)}"
        if not isinstance(settings, dict):
            problems.add(path, f"must be a table of camera settings, got {typed(settings)}")
            continue
        if not CAMERA_ID.fullmatch(name):
            problems.add(path, f"a preset name must match {CAMERA_ID.pattern}")
            continue
        try:
            found[name] = camera_settings.validate(settings)
        except camera_settings.SettingsError as bad:
            for setting, problem in bad.errors.items():
                problems.add(f"{path}.{key(setting)}", problem)
    return found


def tokens(data: Any, problems: Problems) -> list[dict[str, Any]]:
    found = tables(TokenConfig, SPECS[TokenConfig], data, "tokens", problems)
    items = [(f"tokens[{i}].token", t["token"]) for i, t in enumerate(found) if "token" in t]
    check_unique(items, "token", problems)
    return found


# --- rules that relate fields ---


def check_token_cameras(tokens: list[dict[str, Any]], ids: set[str], problems: Problems) -> None:
    if "cameras" in problems.paths:
        return
    for i, token in enumerate(tokens):
        for j, camera in enumerate(token.get("cameras", ())):
            if camera not in ids:
                known = ", ".join(sorted(ids)) if ids else "there are none"
                problem = f"must name a configured camera ({known}), got {show(camera)}"
                problems.add(f"tokens[{i}].cameras[{j}]", problem)


def check_heartbeat(control: dict[str, Any], problems: Problems) -> None:
    if {"control.heartbeat_interval", "control.lost_after"} & problems.paths:
        return
    interval = control.get("heartbeat_interval", _CONTROL.heartbeat_interval)
    lost = control.get("lost_after", _CONTROL.lost_after)
    if lost < 2 * interval:
        problems.add(
            "control.lost_after",
            f"must be at least twice heartbeat_interval ({show(interval)}), got {show(lost)}",
        )


EXPOSED = {
    "ingest": "publish video as any camera",
    "control": "take over any camera's control channel",
}


def check_network_exposure(
    ingest: dict[str, Any], control: dict[str, Any], security: dict[str, Any], problems: Problems
) -> None:
    """A ZeroMQ endpoint other hosts can reach needs camera keys, or an explicit yes."""
    if security.get("keys_dir") or security.get("allow_insecure_network"):
        return
    for name, values, default in (
        ("ingest", ingest, _INGEST.endpoints),
        ("control", control, _CONTROL.endpoints),
    ):
        if any(path.startswith(f"{name}.endpoints") for path in problems.paths):
            continue  # already wrong: one message per mistake
        for i, endpoint in enumerate(values.get("endpoints", default)):
            if is_loopback(endpoint):
                continue
            problems.add(
                f"{name}.endpoints[{i}]",
                f"{show(endpoint)} is reachable from other hosts, and without camera keys "
                f"anyone who reaches it can {EXPOSED[name]}: set security.keys_dir (see "
                "`broker keys init`), or security.allow_insecure_network = true to accept that",
            )


def check_feed_exposure(
    analytics: dict[str, Any], security: dict[str, Any], problems: Problems
) -> None:
    """The frame feed is not encrypted or authenticated (camera keys do not cover it): a
    feed endpoint other hosts can reach needs an explicit yes."""
    if security.get("allow_insecure_network") or any(
        path.startswith("analytics.feed_endpoints") for path in problems.paths
    ):
        return
    for i, endpoint in enumerate(analytics.get("feed_endpoints", ())):
        if not is_loopback(endpoint):
            problems.add(
                f"analytics.feed_endpoints[{i}]",
                f"{show(endpoint)} is reachable from other hosts, and the frame feed has no "
                "keys: anyone who reaches it can watch every camera; bind it on loopback or "
                "ipc://, or set security.allow_insecure_network = true to accept that",
            )


def check_max_cameras(ingest: dict[str, Any], configured: int, problems: Problems) -> None:
    limit = ingest.get("max_cameras", _INGEST.max_cameras)
    if "ingest.max_cameras" not in problems.paths and configured > limit:
        problems.add(
            "ingest.max_cameras",
            f"must be at least the number of configured cameras ({configured}), got {limit}",
        )


def check_orphan_timeout(
    workers: dict[str, Any], control: dict[str, Any], problems: Problems
) -> None:
    if {"workers.orphan_timeout", "control.heartbeat_interval"} & problems.paths:
        return
    timeout = workers.get("orphan_timeout", _WORKERS.orphan_timeout)
    interval = control.get("heartbeat_interval", _CONTROL.heartbeat_interval)
    if timeout < 2 * interval:  # a worker must not leave a broker that is merely between beats
        problems.add(
            "workers.orphan_timeout",
            f"must be at least twice control.heartbeat_interval ({show(interval)}), "
            f"got {show(timeout)}",
        )


def check_restart_delays(workers: dict[str, Any], problems: Problems) -> None:
    if {"workers.restart_delay", "workers.restart_delay_max"} & problems.paths:
        return  # one of them is already wrong; comparing them would only add noise
    delay = workers.get("restart_delay", _WORKERS.restart_delay)
    cap = workers.get("restart_delay_max", _WORKERS.restart_delay_max)
    if cap < delay:
        default = "" if "restart_delay_max" in workers else " (the default)"
        problems.add(
            "workers.restart_delay_max",
            f"must be at least restart_delay ({show(delay)}), got {show(cap)}{default}",
        )


def check_default_camera(server: dict[str, Any], ids: set[str], problems: Problems) -> None:
    name = server.get("default_camera", "")
    if not name or "cameras" in problems.paths or name in ids:
        return
    known = ", ".join(sorted(ids)) if ids else "there are none"
    problems.add(
        "server.default_camera", f"must name a configured camera ({known}), got {show(name)}"
    )


def tls_files(server: dict[str, Any], base: Path | None, problems: Problems) -> None:
    """``server.tls_cert`` and ``tls_key``: both or neither, each a readable file. Relative
    paths are resolved against ``base`` (the config's folder; else the working folder),
    in ``server``, so the broker opens what was checked whatever its working folder.
    Then they must make a usable pair (the broker checks again at start and on reload)."""
    if {"server.tls_cert", "server.tls_key"} & problems.paths:
        return
    cert, key = server.get("tls_cert", ""), server.get("tls_key", "")
    if bool(cert) != bool(key):
        given, missing = ("tls_cert", "tls_key") if cert else ("tls_key", "tls_cert")
        problems.add(
            f"server.{missing}",
            f"must be set with server.{given} (TLS needs both the certificate and its key), "
            'or both left ""',
        )
        return
    for name, value in (("tls_cert", cert), ("tls_key", key)):
        if not value:
            continue
        path = Path(value) if base is None else base / value  # an absolute one stays
        if not path.is_file():
            where = "no such file" if not path.exists() else "not a file"
            problems.add(f"server.{name}", f"{show(value)}: {where} ({path})")
        elif not os.access(path, os.R_OK):
            problems.add(f"server.{name}", f"{show(value)}: not readable by this user ({path})")
        server[name] = str(path.absolute())
    if cert and not ({"server.tls_cert", "server.tls_key"} & problems.paths):
        _check_pair(server["tls_cert"], server["tls_key"], problems)


class _Encrypted(Exception):
    pass


def _encrypted() -> bytes:
    raise _Encrypted  # OpenSSL asks only for an encrypted key; never prompt


def _check_pair(cert: str, key: str, problems: Problems) -> None:
    try:
        ssl.create_default_context(cafile=cert)
    except (ssl.SSLError, ValueError) as exc:
        problems.add("server.tls_cert", f"{cert}: not a PEM certificate{_reason(exc)}")
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_encrypted)
    except _Encrypted:
        problem = f"{key}: encrypted with a passphrase; give an unencrypted key"
        problems.add("server.tls_key", problem)
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            problems.add("server.tls_key", f"{key}: not the private key of server.tls_cert")
        else:
            problems.add("server.tls_key", f"{key}: not a PEM private key{reason}")


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return f" ({reason})" if reason else ""


def check_signed_tokens(security: dict[str, Any], problems: Problems) -> None:
    """The key files of signed tokens must be usable: a secret of 32 bytes or more, a
    JWKS of RS256/ES256 public keys (read here, so ``broker check`` tells)."""
    for name, read in (("jwt_secret_file", read_secret), ("jwks_file", read_jwks)):
        path = security.get(name)
        if not path or f"security.{name}" in problems.paths:
            continue
        try:
            read(path)
        except KeyFileError as exc:
            problems.add(f"security.{name}", f"{path} {exc}")
