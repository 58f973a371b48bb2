"""The broker's configuration: built-in defaults, then a TOML file, then validation.

Every problem is collected, not just the first, and each names the path of the key at
fault (``server.queue_depth``, ``cameras[2].fps``), so one run tells the user all there
is to fix. Unknown keys are errors: a misspelt key must not silently leave a default in
force.

Validation is driven by data: `_SPECS` holds one `_Spec` per field (type, range or
choices, and an optional extra rule); only the rules that relate two fields are code.
``config/example.toml`` documents every key at its default value, and the tests keep it
equal to the defaults and complete.

Pure and synchronous; the only I/O is `load` reading the file.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from broker.protocol import settings as camera_settings
from broker.protocol.wire import CAMERA_ID


class ConfigError(Exception):
    """A configuration the broker cannot run with.

    ``errors`` lists every problem found, each ``"key.path: what is wrong"``;
    ``str(exc)`` is those lines joined by newlines.
    """

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The HTTP/WebSocket server that viewers connect to."""

    listen: str = "0.0.0.0:8765"  # HOST:PORT, HOST an IPv4, a hostname or [IPv6]; PORT 0 = any
    queue_depth: int = 2  # frames queued per client before the oldest is dropped
    send_timeout: float = 5.0  # seconds a client may take to accept one frame
    header_timeout: float = 10.0  # seconds a client has to send its HTTP request head
    default_camera: str = ""  # camera served at "/"; "" = the first configured camera
    cors_origins: tuple[str, ...] = ()  # origins allowed to read our HTTP API; "*" = any
    ws_request_rate: float = 50.0  # requests per second per /ws connection (burst: as many)
    auth_failure_burst: int = 10  # failed tokens an address may present at once
    auth_failure_rate: float = 0.2  # further failed tokens per second and address; then 429

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The ZeroMQ side, where camera workers deliver frames."""

    endpoints: tuple[str, ...] = ("tcp://0.0.0.0:5555",)  # bound for external workers
    max_frame_bytes: int = 16 * 1024 * 1024  # larger frames are dropped
    max_width: int = 8192  # wider frames and uploads are refused before decoding
    max_height: int = 8192  # taller frames and uploads are refused before decoding
    offline_after: float = 3.0  # seconds without a frame before a camera is offline
    accept_unknown_cameras: bool = False  # accept frames for ids absent from the config
    http_sessions: bool = False  # allow POST /api/sessions to create ad-hoc cameras
    session_ttl: float = 60.0  # seconds without a frame before an ad-hoc camera expires
    max_cameras: int = 256  # cameras held at most: configured, ad-hoc and unconfigured


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Recent frames kept per camera for /cameras/{id}/next.jpg (frames in order)."""

    frames: int = 30  # at most this many frames per camera
    max_age: float = 10.0  # seconds a frame is kept (the TTL)
    max_bytes: int = 256 * 1024 * 1024  # memory cap for all cameras together


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    """How the broker supervises the camera workers it starts."""

    restart_delay: float = 1.0  # first delay before restarting a worker; doubles each time
    restart_delay_max: float = 30.0  # cap of that delay
    stop_grace: float = 3.0  # seconds between SIGTERM and SIGKILL at shutdown
    restart_lost_after: float = 3.0  # x control.lost_after silent: kill and restart; 0 = never
    orphan_timeout: float = 15.0  # seconds a worker runs without hearing its broker


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control channel to workers (settings, commands) and its limits."""

    endpoints: tuple[str, ...] = ("tcp://0.0.0.0:5556",)  # ROUTER bound for external workers
    heartbeat_interval: float = 1.0  # seconds between heartbeats, both ways
    lost_after: float = 3.0  # seconds without a word before a worker counts as lost
    command_timeout: float = 5.0  # seconds a worker has to answer a command
    command_rate: float = 10.0  # commands per second per client (burst: as many)
    state_file: str = "camera-broker.state.json"  # relative to the config file; "" = none


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """Apply ``preset`` each day when the local time reaches ``at``."""

    at: dt.time
    preset: str


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """A bearer token and what it may do."""

    token: str
    role: str = "viewer"  # viewer: watch, list, stats; operator: also commands and settings
    cameras: tuple[str, ...] = ()  # the cameras it may see; () = all
    name: str = ""  # shown in the log instead of the token

    @property
    def label(self) -> str:
        """How the log names it: its name, else a short hash; never the token itself."""
        return self.name or "token " + hashlib.sha256(self.token.encode()).hexdigest()[:8]


ROLES = ("viewer", "operator")


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """One camera, either run by a supervised worker or fed by an external one."""

    id: str
    name: str = ""  # display name; "" = the id
    source: str = ""  # "test-pattern", a video file or image folder, or an rtsp/http(s) URL
    device: str = ""  # a V4L2 device such as "/dev/video0"
    width: int = 1280
    height: int = 720
    fps: float = 15.0
    format: str = "jpeg"  # one of cameras.wire.FORMATS
    quality: int = 80  # encoder quality, 1..100
    on_demand: bool = False  # capture only while someone watches
    idle_after: float = 30.0  # on_demand: seconds unwatched before capture stops
    schedule: tuple[ScheduleEntry, ...] = ()  # presets applied at times of day

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def supervised(self) -> bool:
        """True when the broker starts a worker for it; otherwise an external one connects."""
        return bool(self.source or self.device)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    ingest: IngestConfig = IngestConfig()
    workers: WorkersConfig = WorkersConfig()
    retention: RetentionConfig = RetentionConfig()
    control: ControlConfig = ControlConfig()
    cameras: tuple[CameraConfig, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → settings
    tokens: tuple[TokenConfig, ...] = ()  # none: every client may do everything

    def camera(self, camera_id: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.id == camera_id), None)

    @property
    def default_camera(self) -> str | None:
        """The camera served at "/": the configured one, else the first, else None."""
        if self.server.default_camera:
            return self.server.default_camera
        return self.cameras[0].id if self.cameras else None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read: not UTF-8 (byte {exc.start})") from exc
    return parse(text, source, base=Path(path).resolve().parent)


def parse(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate TOML text; ``source`` names it in syntax errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return from_dict(data, base)


def from_dict(data: Mapping[str, Any], base: Path | None = None) -> Config:
    """Validate already-parsed TOML; raises `ConfigError` listing every problem.
    A relative ``control.state_file`` is resolved against ``base`` (the config's folder)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: must be a table, got {_typed(data)}")
    problems = _Problems()
    tables: dict[str, dict[str, Any]] = {}
    cameras: list[dict[str, Any]] = []
    camera_ids: set[str] = set()
    presets = _presets(data.get("presets", {}), problems)
    tokens = _tokens(data.get("tokens", []), problems)
    for key, value in data.items():
        if key in _SECTIONS:
            tables[key] = _table(_SECTIONS[key], value, key, problems)
        elif key == "cameras":
            cameras, camera_ids = _cameras(value, presets, problems)
        elif key not in ("presets", "tokens"):
            problems.add(_key(key), _unknown(key, _TOP_LEVEL))
    _check_restart_delays(tables.get("workers", {}), problems)
    _check_heartbeat(tables.get("control", {}), problems)
    _check_orphan_timeout(tables.get("workers", {}), tables.get("control", {}), problems)
    _check_default_camera(tables.get("server", {}), camera_ids, problems)
    _check_token_cameras(tokens, camera_ids, problems)
    _check_max_cameras(tables.get("ingest", {}), len(cameras), problems)
    if problems.messages:
        raise ConfigError(problems.messages)
    control = tables.get("control", {})
    state_file = control.get("state_file", ControlConfig.__dataclass_fields__["state_file"].default)
    if state_file and base is not None:
        control["state_file"] = str(base / state_file)  # an absolute one stays as it is
    return Config(
        server=ServerConfig(**tables.get("server", {})),
        ingest=IngestConfig(**tables.get("ingest", {})),
        workers=WorkersConfig(**tables.get("workers", {})),
        retention=RetentionConfig(**tables.get("retention", {})),
        control=ControlConfig(**control),
        cameras=tuple(CameraConfig(**camera) for camera in cameras),
        presets=presets,
        tokens=tuple(TokenConfig(**token) for token in tokens),
    )


# --- field rules: each takes a value of the right type, returns a problem or None ---


def _split_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError says what is wrong."""
    host, _, port = listen.rpartition(":")
    if not (re.fullmatch(r"[0-9]{1,5}", port) and int(port) <= 65535):
        raise ValueError(f"must be HOST:PORT with PORT from 0 to 65535, got {_show(listen)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = _is_ip(host, ipaddress.IPv6Address)
    elif re.fullmatch(r"[0-9.]+", host):  # all digits and dots: an IPv4 address or nothing
        valid = _is_ip(host, ipaddress.IPv4Address)
    else:
        valid = _HOSTNAME.fullmatch(host) is not None and len(host) <= 253
    if not valid:
        raise ValueError(
            "must be HOST:PORT with HOST an IPv4 address, a hostname or [IPv6 address], "
            f"got {_show(listen)}"
        )
    return host, int(port)


# Labels of letters, digits, "-" and (leniently, as resolvers accept it) "_".
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _is_ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _listen_problem(listen: str) -> str | None:
    try:
        _split_listen(listen)
    except ValueError as exc:
        return str(exc)
    return None


def _endpoint_problem(endpoint: str) -> str | None:
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme == "ipc" and rest:
        return None
    if scheme == "tcp" and host and (port == "*" or (port.isdigit() and int(port) <= 65535)):
        return None
    return f"must be tcp://HOST:PORT or ipc://PATH, got {_show(endpoint)}"


def _origin_problem(origin: str) -> str | None:
    if origin == "*" or re.fullmatch(r"https?://[^/\s]+", origin):
        return None
    return f'must be "*" or an origin such as "https://grafana.example:3000", got {_show(origin)}'


def _camera_id_problem(camera_id: str) -> str | None:
    if CAMERA_ID.fullmatch(camera_id):
        return None
    return f"must match {CAMERA_ID.pattern}, got {_show(camera_id)}"


def _source_problem(source: str) -> str | None:
    scheme, sep, rest = source.partition("://")
    if not sep or (scheme.lower() in ("rtsp", "http", "https") and rest):
        return None  # "", "test-pattern", a path, or a URL we can open
    return (
        "must be test-pattern, a file or folder path, or an rtsp://, http:// or https:// URL, "
        f"got {_show(source)}"
    )


def _token_problem(token: str) -> str | None:
    if len(token) >= 8 and not any(c.isspace() for c in token):
        return None
    return "must be at least 8 characters without spaces (e.g. from `openssl rand -hex 16`)"


def _lost_factor_problem(factor: float) -> str | None:
    if factor == 0 or factor >= 1:
        return None
    return f"must be 0 (never) or at least 1 (a multiple of control.lost_after), got {factor!r}"


def _device_problem(device: str) -> str | None:
    if not device or (device.startswith("/dev/") and len(device) > len("/dev/")):
        return None
    return f'must be a device path such as "/dev/video0", got {_show(device)}'


# --- the per-field specs ---


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: type  # bool, int, float, str, or tuple for an array of `item`
    lo: float | None = None  # inclusive range, for int and float
    hi: float | None = None
    choices: tuple[str, ...] = ()
    rule: Callable[[Any], str | None] | None = None  # extra check once the type is right
    item: _Spec | None = None  # for arrays


def _setting(name: str) -> _Spec:
    rule = camera_settings.SETTINGS[name]
    return _Spec(rule.kind, rule.lo, rule.hi, rule.choices)


_SPECS: dict[type, dict[str, _Spec]] = {
    ServerConfig: {
        "listen": _Spec(str, rule=_listen_problem),
        "queue_depth": _Spec(int, 1, 64),
        "send_timeout": _Spec(float, 0.1, 300),
        "header_timeout": _Spec(float, 0.1, 300),
        "default_camera": _Spec(str),
        "cors_origins": _Spec(tuple, item=_Spec(str, rule=_origin_problem)),
        "ws_request_rate": _Spec(float, 1, 10000),
        "auth_failure_burst": _Spec(int, 1, 10000),
        "auth_failure_rate": _Spec(float, 0.001, 1000),
    },
    IngestConfig: {
        "endpoints": _Spec(tuple, item=_Spec(str, rule=_endpoint_problem)),
        "max_frame_bytes": _Spec(int, 1024, 256 * 1024 * 1024),
        "max_width": _Spec(int, 16, 16384),
        "max_height": _Spec(int, 16, 16384),
        "offline_after": _Spec(float, 0.1, 3600),
        "accept_unknown_cameras": _Spec(bool),
        "http_sessions": _Spec(bool),
        "session_ttl": _Spec(float, 1, 86400),
        "max_cameras": _Spec(int, 1, 100_000),
    },
    RetentionConfig: {
        "frames": _Spec(int, 1, 1000),
        "max_age": _Spec(float, 0.1, 3600),
        "max_bytes": _Spec(int, 1024 * 1024, 16 * 1024**3),
    },
    ControlConfig: {
        "endpoints": _Spec(tuple, item=_Spec(str, rule=_endpoint_problem)),
        "heartbeat_interval": _Spec(float, 0.1, 60),
        "lost_after": _Spec(float, 0.3, 600),
        "command_timeout": _Spec(float, 0.1, 300),
        "command_rate": _Spec(float, 0.1, 10000),
        "state_file": _Spec(str),
    },
    TokenConfig: {
        "token": _Spec(str, rule=_token_problem),
        "role": _Spec(str, choices=ROLES),
        "cameras": _Spec(tuple, item=_Spec(str)),
        "name": _Spec(str),
    },
    WorkersConfig: {
        "restart_delay": _Spec(float, 0.1, 60),
        "restart_delay_max": _Spec(float, 1, 3600),
        "stop_grace": _Spec(float, 0.1, 60),
        "restart_lost_after": _Spec(float, 0, 100, rule=_lost_factor_problem),
        "orphan_timeout": _Spec(float, 1, 3600),
    },
    CameraConfig: {
        "id": _Spec(str, rule=_camera_id_problem),
        "name": _Spec(str),
        "source": _Spec(str, rule=_source_problem),
        "device": _Spec(str, rule=_device_problem),
        # The camera's settings have one set of rules: the settings table's.
        **{name: _setting(name) for name in ("width", "height", "fps", "format", "quality")},
        "on_demand": _Spec(bool),
        "idle_after": _Spec(float, 1, 86400),
        "schedule": _Spec(list),  # checked by _schedule
    },
}

_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "ingest": IngestConfig,
    "workers": WorkersConfig,
    "retention": RetentionConfig,
    "control": ControlConfig,
}
_TOP_LEVEL = [*_SECTIONS, "cameras", "presets", "tokens"]

_INVALID = object()  # marks a value that failed its check


class _Problems:
    """Every problem found so far, and the key paths they concern."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.paths: set[str] = set()

    def add(self, path: str, problem: str) -> None:
        self.messages.append(f"{path}: {problem}")
        self.paths.add(path)


def _table(cls: type, data: Any, path: str, problems: _Problems) -> dict[str, Any]:
    """The valid values of one table, keyed by field; the rest become problems."""
    if not isinstance(data, dict):
        problems.add(path, f"must be a table, got {_typed(data)}")
        return {}
    specs = _SPECS[cls]
    for spec_field in fields(cls):
        if spec_field.default is MISSING and spec_field.name not in data:
            problems.add(f"{path}.{spec_field.name}", "is required")
    values: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{_key(key)}"
        if key not in specs:
            problems.add(key_path, _unknown(key, list(specs), path))
            continue
        checked = _check(specs[key], value, key_path, problems)
        if checked is not _INVALID:
            values[key] = checked
    return values


def _check(spec: _Spec, value: Any, path: str, problems: _Problems) -> Any:
    """The value as stored (floats as float, arrays as tuples), or `_INVALID`."""
    if spec.kind is list:  # an array of tables, checked by its own function
        return value
    if spec.item is not None:
        return _check_array(spec.item, value, path, problems)
    problem = _problem(spec, value)
    if problem is not None:
        problems.add(path, problem)
        return _INVALID
    return float(value) if spec.kind is float else value


def _check_array(item: _Spec, value: Any, path: str, problems: _Problems) -> Any:
    if not isinstance(value, list):
        problems.add(path, f"must be an array of {_plural(item)}, got {_typed(value)}")
        return _INVALID
    checked = [_check(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    # Our arrays list endpoints to bind (binding one twice fails) or camera ids.
    _check_unique([(f"{path}[{i}]", v) for i, v in enumerate(value)], "entry", problems)
    return _INVALID if _INVALID in checked else tuple(checked)


def _problem(spec: _Spec, value: Any) -> str | None:
    if not _has_kind(spec.kind, value):
        return f"must be {_want(spec)}, got {_typed(value)}"
    out_of_range = spec.lo is not None and not (
        (not isinstance(value, float) or math.isfinite(value)) and spec.lo <= value <= spec.hi
    )
    if out_of_range or (spec.choices and value not in spec.choices):
        return f"must be {_want(spec)}, got {_show(value)}"
    return spec.rule(value) if spec.rule is not None else None


def _has_kind(kind: type, value: Any) -> bool:
    if isinstance(value, bool):  # bool is an int subclass, but true is not a number
        return kind is bool
    if kind is float:  # an int is a fine float: `fps = 15`
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _want(spec: _Spec) -> str:
    return camera_settings.want(spec.kind, spec.lo, spec.hi, spec.choices)


def _plural(spec: _Spec) -> str:
    plurals: dict[type, str] = {str: "strings"}  # the only arrays so far
    return plurals[spec.kind]


# --- cameras and the rules that relate fields ---


def _cameras(
    data: Any, presets: dict[str, dict[str, Any]], problems: _Problems
) -> tuple[list[dict[str, Any]], set[str]]:
    """The valid cameras' values, and every id given (valid or not)."""
    cameras = _tables(CameraConfig, data, "cameras", problems)
    for i, camera in enumerate(cameras):
        if camera.get("source") and camera.get("device"):
            problems.add(f"cameras[{i}]", "must not set both source and device")
        if "schedule" in camera:
            camera["schedule"] = _schedule(camera["schedule"], presets, i, problems)
    ids = [(f"cameras[{i}].id", c["id"]) for i, c in enumerate(cameras) if "id" in c]
    _check_unique(ids, "camera id", problems)
    given = {c["id"] for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)}
    return cameras, given


def _tables(cls: type, data: Any, path: str, problems: _Problems) -> list[dict[str, Any]]:
    """An array of tables such as [[cameras]]: each one's valid values."""
    if not isinstance(data, list):
        problems.add(path, f"must be an array of tables ([[{path}]]), got {_typed(data)}")
        return []
    return [_table(cls, table, f"{path}[{i}]", problems) for i, table in enumerate(data)]


def _schedule(
    data: Any, presets: dict[str, dict[str, Any]], camera: int, problems: _Problems
) -> tuple[ScheduleEntry, ...]:
    path = f"cameras[{camera}].schedule"
    if not isinstance(data, list):
        problems.add(path, f'must be an array of {{at = "HH:MM", preset = "NAME"}}, got '
                     f"{_typed(data)}")  # fmt: skip
        return ()
    entries = []
    for i, entry in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.add(where, f'must be a table {{at = "HH:MM", preset = "NAME"}}, got '
                         f"{_typed(entry)}")  # fmt: skip
            continue
        for key in entry.keys() - {"at", "preset"}:
            problems.add(f"{where}.{_key(key)}", _unknown(key, ["at", "preset"]))
        at, preset = _time_of_day(entry.get("at")), entry.get("preset")
        if at is None:
            shown = _typed(entry["at"]) if "at" in entry else "nothing"
            problems.add(f"{where}.at", f'must be a time of day such as "07:30", got {shown}')
        if preset not in presets:
            known = ", ".join(presets) if presets else "there are none"
            shown = _show(preset) if "preset" in entry else "nothing"
            problems.add(f"{where}.preset", f"must name a preset ({known}), got {shown}")
        if at is not None and preset in presets:
            entries.append(ScheduleEntry(at, preset))
    return tuple(entries)


def _time_of_day(value: Any) -> dt.time | None:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        try:
            return dt.time(*map(int, value.split(":")))
        except ValueError:
            return None
    return None


def _presets(data: Any, problems: _Problems) -> dict[str, dict[str, Any]]:
    """``[presets.NAME]`` tables of camera settings, each checked like a settings change."""
    if not isinstance(data, dict):
        problems.add("presets", f"must be a table of [presets.NAME] tables, got {_typed(data)}")
        return {}
    presets = {}
    for name, settings in data.items():
        path = f"presets.{_key(name)}"
        if not isinstance(settings, dict):
            problems.add(path, f"must be a table of camera settings, got {_typed(settings)}")
            continue
        if not CAMERA_ID.fullmatch(name):
            problems.add(path, f"a preset name must match {CAMERA_ID.pattern}")
            continue
        try:
            presets[name] = camera_settings.validate(settings)
        except camera_settings.SettingsError as bad:
            for key, problem in bad.errors.items():
                problems.add(f"{path}.{_key(key)}", problem)
    return presets


def _tokens(data: Any, problems: _Problems) -> list[dict[str, Any]]:
    tokens = _tables(TokenConfig, data, "tokens", problems)
    items = [(f"tokens[{i}].token", t["token"]) for i, t in enumerate(tokens) if "token" in t]
    _check_unique(items, "token", problems)
    return tokens


def _check_token_cameras(
    tokens: list[dict[str, Any]], ids: set[str], problems: _Problems
) -> None:
    if "cameras" in problems.paths:
        return
    for i, token in enumerate(tokens):
        for j, camera in enumerate(token.get("cameras", ())):
            if camera not in ids:
                known = ", ".join(sorted(ids)) if ids else "there are none"
                problem = f"must name a configured camera ({known}), got {_show(camera)}"
                problems.add(f"tokens[{i}].cameras[{j}]", problem)


def _check_heartbeat(control: dict[str, Any], problems: _Problems) -> None:
    if {"control.heartbeat_interval", "control.lost_after"} & problems.paths:
        return
    defaults = ControlConfig()
    interval = control.get("heartbeat_interval", defaults.heartbeat_interval)
    lost = control.get("lost_after", defaults.lost_after)
    if lost < 2 * interval:
        problems.add("control.lost_after", f"must be at least twice heartbeat_interval "
                     f"({_show(interval)}), got {_show(lost)}")  # fmt: skip


def _check_max_cameras(ingest: dict[str, Any], configured: int, problems: _Problems) -> None:
    limit = ingest.get("max_cameras", IngestConfig.__dataclass_fields__["max_cameras"].default)
    if "ingest.max_cameras" not in problems.paths and configured > limit:
        problems.add("ingest.max_cameras", f"must be at least the number of configured "
                     f"cameras ({configured}), got {limit}")  # fmt: skip


def _check_orphan_timeout(
    workers: dict[str, Any], control: dict[str, Any], problems: _Problems
) -> None:
    if {"workers.orphan_timeout", "control.heartbeat_interval"} & problems.paths:
        return
    timeout = workers.get("orphan_timeout", _DEFAULTS.orphan_timeout)
    interval = control.get("heartbeat_interval", ControlConfig().heartbeat_interval)
    if timeout < 2 * interval:  # a worker must not leave a broker that is merely between beats
        problems.add(
            "workers.orphan_timeout",
            f"must be at least twice control.heartbeat_interval ({_show(interval)}), "
            f"got {_show(timeout)}",
        )


def _check_unique(items: list[tuple[str, Any]], what: str, problems: _Problems) -> None:
    first: dict[str, str] = {}
    for path, value in items:
        if not isinstance(value, str):
            continue  # already reported as the wrong type
        if value in first:
            problems.add(path, f"duplicate {what} {_show(value)} (also {first[value]})")
        else:
            first[value] = path


_DEFAULTS = WorkersConfig()  # with slots, the class attributes are not the defaults


def _check_restart_delays(workers: dict[str, Any], problems: _Problems) -> None:
    if {"workers.restart_delay", "workers.restart_delay_max"} & problems.paths:
        return  # one of them is already wrong; comparing them would only add noise
    delay = workers.get("restart_delay", _DEFAULTS.restart_delay)
    cap = workers.get("restart_delay_max", _DEFAULTS.restart_delay_max)
    if cap < delay:
        default = "" if "restart_delay_max" in workers else " (the default)"
        problems.add(
            "workers.restart_delay_max",
            f"must be at least restart_delay ({_show(delay)}), got {_show(cap)}{default}",
        )


def _check_default_camera(server: dict[str, Any], ids: set[str], problems: _Problems) -> None:
    name = server.get("default_camera", "")
    if not name or "cameras" in problems.paths or name in ids:
        return
    known = ", ".join(sorted(ids)) if ids else "there are none"
    problems.add(
        "server.default_camera", f"must name a configured camera ({known}), got {_show(name)}"
    )


def _unknown(key: str, known: list[str], table: str = "") -> str:
    if table and key in (*_SECTIONS, "cameras"):
        # TOML puts every key after a [table] header into that table.
        return "unknown key (a top-level key, so it must come before the first [table])"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (known keys: {', '.join(known)})"


# --- showing values in messages ---


def _key(key: str) -> str:
    """A key as TOML would write it, so a path stays unambiguous."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _show(value: Any) -> str:
    """A value as TOML would write it (long strings shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return repr(value)


def _typed(value: Any) -> str:
    """A value of the wrong type: tables and arrays by kind only, the rest with their kind."""
    if isinstance(value, dict | list):
        return _kind(value)
    return f"{_show(value)} ({_kind(value)})"


def _kind(value: Any) -> str:
    return camera_settings.kind_of(value, table="a table")
