"""What a valid configuration is: frozen dataclasses, one per TOML table, whose defaults
are the broker's defaults (``config/example.toml`` shows each at its default).

Every instance built by `broker.config.load` has passed validation; building one by
hand (as tests do) checks nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.config.show import show


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
    tls_cert: str = ""  # PEM certificate chain, relative to the config file; "" = plain HTTP
    tls_key: str = ""  # PEM private key of tls_cert, relative to the config file

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The ZeroMQ side, where camera workers deliver frames."""

    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5555",)  # bound for external workers
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

    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5556",)  # ROUTER bound for external workers
    heartbeat_interval: float = 1.0  # seconds between heartbeats, both ways
    lost_after: float = 3.0  # seconds without a word before a worker counts as lost
    command_timeout: float = 5.0  # seconds a worker has to answer a command
    command_rate: float = 10.0  # commands per second per client (burst: as many)
    state_file: str = "camera-broker.state.json"  # relative to the config file; "" = none


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may publish and answer for a camera, and which signed tokens are honoured."""

    keys_dir: str = ""  # CURVE keys (broker keys init/add), relative to the config file
    allow_insecure_network: bool = False  # allow non-loopback ZeroMQ endpoints without keys
    jwt_secret_file: str = ""  # HS256 secret for signed tokens (broker share)
    jwks_file: str = ""  # public keys (RS256/ES256) of an identity provider, as a JWKS
    revoked: tuple[str, ...] = ()  # ids (jti) of signed tokens refused from now on
    clock_skew: float = 30.0  # seconds of clock difference tolerated on exp and nbf


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """Motion, face and person detection in a supervised analyzer process, off the
    delivery path; each camera opts in with its ai_* settings."""

    enabled: bool = False  # start the analyzer (camera-analyzer) and the frame feed
    feed_endpoints: tuple[str, ...] = ()  # extra endpoints of the frame feed (PUB)
    fps: float = 5.0  # frames analysed per second per camera at most (newest wins)
    analyse_width: int = 640  # frames are downscaled to this width before detection
    motion_min_area: float = 0.01  # fraction of the frame that must move to be motion
    motion_settle: float = 2.0  # seconds without motion before motion_stopped
    events_per_second: float = 4.0  # objects_detected events per camera per second
    history: int = 200  # recent detections kept per camera for /api/.../detections
    onnx_model: str = ""  # an ONNX detection model, relative to the config file
    onnx_labels: str = ""  # its class names, one a line, relative to the config file
    onnx_input: int = 640  # the model's square input size in pixels


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
    device: str | int = ""  # a V4L2 device such as "/dev/video0", or an index (0: the first)
    width: int = 1280
    height: int = 720
    fps: float = 15.0
    format: str = "jpeg"  # one of broker.protocol.wire.FORMATS
    quality: int = 80  # encoder quality, 1..100
    tiff_depth: int = 8  # format tiff: 8 (RGB) or 16 (greyscale)
    on_demand: bool = False  # capture only while someone watches
    idle_after: float = 30.0  # on_demand: seconds unwatched before capture stops
    schedule: tuple[ScheduleEntry, ...] = ()  # presets applied at times of day

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def supervised(self) -> bool:
        """True when the broker starts a worker for it; otherwise an external one connects."""
        return bool(self.source) or self.device != ""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    ingest: IngestConfig = IngestConfig()
    workers: WorkersConfig = WorkersConfig()
    retention: RetentionConfig = RetentionConfig()
    control: ControlConfig = ControlConfig()
    security: SecurityConfig = SecurityConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    cameras: tuple[CameraConfig, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → settings
    tokens: tuple[TokenConfig, ...] = ()  # none: every client may do everything

    def network_endpoints(self) -> list[str]:
        """The ingest and control endpoints reachable from other hosts (`is_loopback`)."""
        return [
            endpoint
            for endpoint in (*self.ingest.endpoints, *self.control.endpoints)
            if not is_loopback(endpoint)
        ]

    def camera(self, camera_id: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.id == camera_id), None)

    @property
    def default_camera(self) -> str | None:
        """The camera served at "/": the configured one, else the first, else None."""
        if self.server.default_camera:
            return self.server.default_camera
        return self.cameras[0].id if self.cameras else None


# The tables with one section each; "cameras", "presets" and "tokens" have their own shapes.
SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "ingest": IngestConfig,
    "workers": WorkersConfig,
    "retention": RetentionConfig,
    "control": ControlConfig,
    "security": SecurityConfig,
    "analytics": AnalyticsConfig,
}
TOP_LEVEL = [*SECTIONS, "cameras", "presets", "tokens"]


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError says what is wrong."""
    host, _, port = listen.rpartition(":")
    if not (re.fullmatch(r"[0-9]{1,5}", port) and int(port) <= 65535):
        raise ValueError(f"must be HOST:PORT with PORT from 0 to 65535, got {show(listen)}")
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
            f"got {show(listen)}"
        )
    return host, int(port)


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this host only: ``ipc://`` and
    ``inproc://``, or ``tcp://`` on 127.0.0.0/8, ``[::1]`` or ``localhost``. Anything
    else (``*``, 0.0.0.0, ``::``, an interface name, a LAN address, a host name) counts
    as reachable from the network."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Labels of letters, digits, "-" and (leniently, as resolvers accept it) "_".
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _is_ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True
