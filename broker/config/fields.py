"""What each key accepts: `SPECS`, one `Spec` per field of each table, and the rules
for values that a kind and a range cannot describe (addresses, ids, paths).

A camera's settings (width, fps, format...) take their ranges from the settings table
(`broker.protocol.settings`), and the heartbeat its range from `broker.protocol.control`:
the sources the worker and the broker share.
"""

from __future__ import annotations

import re

from broker.config.engine import Spec
from broker.config.model import (
    ROLES,
    AnalyticsConfig,
    CameraConfig,
    ControlConfig,
    IngestConfig,
    RetentionConfig,
    SecurityConfig,
    ServerConfig,
    TokenConfig,
    WorkersConfig,
    split_listen,
)
from broker.config.show import show
from broker.protocol import settings as camera_settings
from broker.protocol.control import HEARTBEAT_RANGE
from broker.protocol.wire import CAMERA_ID

MAX_INDEX = 1023  # camera indexes: /dev/video0../dev/video1023

# --- field rules: each takes a value of the right type, returns a problem or None ---


def _listen_problem(listen: str) -> str | None:
    try:
        split_listen(listen)
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
    return f"must be tcp://HOST:PORT or ipc://PATH, got {show(endpoint)}"


def _origin_problem(origin: str) -> str | None:
    if origin == "*" or re.fullmatch(r"https?://[^/\s]+", origin):
        return None
    return f'must be "*" or an origin such as "https://grafana.example:3000", got {show(origin)}'


def _camera_id_problem(camera_id: str) -> str | None:
    if CAMERA_ID.fullmatch(camera_id):
        return None
    return f"must match {CAMERA_ID.pattern}, got {show(camera_id)}"


def _source_problem(source: str) -> str | None:
    scheme, sep, rest = source.partition("://")
    if not sep or (scheme.lower() in ("rtsp", "http", "https") and rest):
        return None  # "", "test-pattern", a path, or a URL we can open
    return (
        "must be test-pattern, a file or folder path, or an rtsp://, http:// or https:// URL, "
        f"got {show(source)}"
    )


def _token_problem(token: str) -> str | None:
    if len(token) >= 8 and not any(c.isspace() for c in token):
        return None
    return "must be at least 8 characters without spaces (e.g. from `openssl rand -hex 16`)"


def _lost_factor_problem(factor: float) -> str | None:
    if factor == 0 or factor >= 1:
        return None
    return f"must be 0 (never) or at least 1 (a multiple of control.lost_after), got {factor!r}"


def _tiff_depth_problem(depth: int) -> str | None:
    return None if depth in (8, 16) else f"must be 8 or 16, got {depth}"


def _device_problem(device: object) -> str | None:
    if isinstance(device, int) and not isinstance(device, bool) and 0 <= device <= MAX_INDEX:
        return None  # a camera index, as OpenCV numbers them
    if isinstance(device, str) and (
        not device or (device.startswith("/dev/") and len(device) > len("/dev/"))
    ):
        return None
    return (
        'must be a device path such as "/dev/video0" or a camera index (an integer from 0 '
        f"to {MAX_INDEX}), got {show(device)}"
    )


# --- the per-field specs ---


def _setting(name: str) -> Spec:
    rule = camera_settings.SETTINGS[name]
    return Spec(rule.kind, rule.lo, rule.hi, rule.choices)


SPECS: dict[type, dict[str, Spec]] = {
    ServerConfig: {
        "listen": Spec(str, rule=_listen_problem),
        "queue_depth": Spec(int, 1, 64),
        "send_timeout": Spec(float, 0.1, 300),
        "header_timeout": Spec(float, 0.1, 300),
        "default_camera": Spec(str),
        "cors_origins": Spec(tuple, item=Spec(str, rule=_origin_problem)),
        "ws_request_rate": Spec(float, 1, 10000),
        "auth_failure_burst": Spec(int, 1, 10000),
        "auth_failure_rate": Spec(float, 0.001, 1000),
        "tls_cert": Spec(str),
        "tls_key": Spec(str),
    },
    IngestConfig: {
        "endpoints": Spec(tuple, item=Spec(str, rule=_endpoint_problem)),
        "max_frame_bytes": Spec(int, 1024, 256 * 1024 * 1024),
        "max_width": Spec(int, 16, 16384),
        "max_height": Spec(int, 16, 16384),
        "offline_after": Spec(float, 0.1, 3600),
        "accept_unknown_cameras": Spec(bool),
        "http_sessions": Spec(bool),
        "session_ttl": Spec(float, 1, 86400),
        "max_cameras": Spec(int, 1, 100_000),
    },
    RetentionConfig: {
        "frames": Spec(int, 1, 1000),
        "max_age": Spec(float, 0.1, 3600),
        "max_bytes": Spec(int, 1024 * 1024, 16 * 1024**3),
    },
    ControlConfig: {
        "endpoints": Spec(tuple, item=Spec(str, rule=_endpoint_problem)),
        "heartbeat_interval": Spec(float, *HEARTBEAT_RANGE),  # the worker's --heartbeat too
        "lost_after": Spec(float, 0.3, 600),
        "command_timeout": Spec(float, 0.1, 300),
        "command_rate": Spec(float, 0.1, 10000),
        "state_file": Spec(str),
    },
    SecurityConfig: {
        "keys_dir": Spec(str),
        "allow_insecure_network": Spec(bool),
        "jwt_secret_file": Spec(str),
        "jwks_file": Spec(str),
        "revoked": Spec(tuple, item=Spec(str)),
        "clock_skew": Spec(float, 0, 3600),
    },
    AnalyticsConfig: {
        "enabled": Spec(bool),
        "feed_endpoints": Spec(tuple, item=Spec(str, rule=_endpoint_problem)),
        "fps": Spec(float, 0.1, 60),
        "analyse_width": Spec(int, 64, 4096),
        "motion_min_area": Spec(float, 0.0001, 1),
        "motion_settle": Spec(float, 0, 3600),
        "events_per_second": Spec(float, 0.1, 100),
        "history": Spec(int, 1, 100_000),
        "onnx_model": Spec(str),
        "onnx_labels": Spec(str),
        "onnx_input": Spec(int, 32, 4096),
    },
    TokenConfig: {
        "token": Spec(str, rule=_token_problem),
        "role": Spec(str, choices=ROLES),
        "cameras": Spec(tuple, item=Spec(str)),
        "name": Spec(str),
    },
    WorkersConfig: {
        "restart_delay": Spec(float, 0.1, 60),
        "restart_delay_max": Spec(float, 1, 3600),
        "stop_grace": Spec(float, 0.1, 60),
        "restart_lost_after": Spec(float, 0, 100, rule=_lost_factor_problem),
        "orphan_timeout": Spec(float, 1, 3600),
    },
    CameraConfig: {
        "id": Spec(str, rule=_camera_id_problem),
        "name": Spec(str),
        "source": Spec(str, rule=_source_problem),
        "device": Spec(object, rule=_device_problem),  # a path or an index
        # The camera's settings have one set of rules: the settings table's.
        **{name: _setting(name) for name in ("width", "height", "fps", "format", "quality")},
        "tiff_depth": Spec(int, 8, 16, rule=_tiff_depth_problem),
        "on_demand": Spec(bool),
        "idle_after": Spec(float, 1, 86400),
        "schedule": Spec(list),  # checked by broker.config.rules.schedule
    },
}
