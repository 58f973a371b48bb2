"""Which resource a request asks for, and whether its caller may have it. Pure.

`parse` reads a request target once into a `Route` value (its `Kind`, camera, preset
and query); everything after works on that value. `Router.authorize` is the one place
that decides access: the caller's token (401, and 429 once an address has presented
too many wrong ones), the cameras it may see (403 before any 404, so a limited token
learns nothing of cameras it may not see), what needs an operator token,
``/metrics`` needing a token limited to no cameras, and, with no tokens configured, the
``Origin`` of state-changing requests (a page of another origin may not change cameras).
`Router.stream_target` resolves a camera WebSocket upgrade. `CommandRate` is the one
command rate limit (``control.command_rate``) that HTTP and ``/ws`` share.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from broker.config import Config
from broker.core.hub import Hub
from broker.serve.access import CROSS_ORIGIN, OPEN, Access, Grant, Refused, request_token
from broker.serve.http import Response, error
from broker.support.logthrottle import LogThrottle
from broker.support.ratelimit import RateLimiter
from broker.trust.tokens import redact

log = logging.getLogger("broker.server")

MAX_FPS = 1000.0


class Kind(enum.Enum):
    """What a request path names."""

    STATIC = "static"  # the viewer page and its assets
    HEALTH = "health"  # /healthz
    CAMERAS = "cameras"  # /api/cameras
    STATS = "stats"  # /api/stats
    PRESETS = "presets"  # /api/presets
    METRICS = "metrics"  # /metrics
    SESSIONS = "sessions"  # /api/sessions: an ad-hoc camera for an HTTP producer
    MUX = "mux"  # /ws: the multiplexed WebSocket endpoint
    WEBSOCKET = "websocket"  # /cameras/{id} (and / for the default camera, as an upgrade)
    SNAPSHOT = "snapshot"  # /cameras/{id}/snapshot.jpg
    MJPEG = "mjpeg"  # /cameras/{id}/mjpeg
    NEXT = "next"  # /cameras/{id}/next.jpg: frames in order
    FRAMES = "frames"  # /cameras/{id}/frames: uploads
    SETTINGS = "settings"  # /api/cameras/{id}/settings
    PRESET = "preset"  # /api/cameras/{id}/presets/{name}
    DETECTIONS = "detections"  # /api/cameras/{id}/detections: recent analytics results
    NOT_FOUND = "not_found"


STATIC_FILES = {
    "/": "index.html",
    "/viewer.js": "viewer.js",
    "/settings.js": "settings.js",
    "/analytics.js": "analytics.js",
    "/viewer.css": "viewer.css",
}
FIXED = {
    "/healthz": Kind.HEALTH,
    "/api/cameras": Kind.CAMERAS,
    "/api/stats": Kind.STATS,
    "/api/presets": Kind.PRESETS,
    "/metrics": Kind.METRICS,
    "/api/sessions": Kind.SESSIONS,
    "/ws": Kind.MUX,
}
CAMERA_OUTPUTS = {
    "snapshot.jpg": Kind.SNAPSHOT,
    "mjpeg": Kind.MJPEG,
    "next.jpg": Kind.NEXT,
    "frames": Kind.FRAMES,
}
# The methods each kind answers (any other gets 405); GET and HEAD for the rest.
METHODS = {
    Kind.FRAMES: ("POST",),
    Kind.SESSIONS: ("POST",),
    Kind.PRESET: ("POST",),
    Kind.SETTINGS: ("GET", "PATCH"),
}
# What changes the broker or a camera: an operator token only.
WRITES = frozenset((Kind.FRAMES, Kind.SESSIONS, Kind.SETTINGS, Kind.PRESET))
# Methods that change state: refused from pages of another origin when no tokens are set.
UNSAFE_METHODS = frozenset(("POST", "PATCH", "PUT", "DELETE"))


@dataclass(frozen=True, slots=True)
class Route:
    """A request target, parsed once."""

    kind: Kind
    path: str  # percent-decoded
    camera: str = ""  # the camera the path names, if any
    preset: str | None = None  # Kind.PRESET's name
    query: Mapping[str, list[str]] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    @property
    def methods(self) -> tuple[str, ...]:
        return METHODS.get(self.kind, ("GET", "HEAD"))

    @property
    def command(self) -> bool:
        """A camera command over HTTP: the settings or a preset."""
        return self.kind is Kind.SETTINGS or self.kind is Kind.PRESET


def parse(target: bytes) -> Route:
    """The route of a raw request target (path and query)."""
    parts = urlsplit(target.decode("ascii", "replace"))
    path, query = unquote(parts.path) or "/", parse_qs(parts.query)
    kind, camera, preset = _classify(path)
    return Route(kind, path, camera, preset, query)


def _classify(path: str) -> tuple[Kind, str, str | None]:
    if path in FIXED:
        return FIXED[path], "", None
    if path in STATIC_FILES:
        return Kind.STATIC, "", None
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "cameras" and parts[2]:
        if len(parts) == 3:
            return Kind.WEBSOCKET, parts[2], None
        if len(parts) == 4 and parts[3] in CAMERA_OUTPUTS:
            return CAMERA_OUTPUTS[parts[3]], parts[2], None
    elif len(parts) >= 5 and parts[1:3] == ["api", "cameras"] and parts[3]:
        if len(parts) == 5 and parts[4] == "settings":
            return Kind.SETTINGS, parts[3], None
        if len(parts) == 5 and parts[4] == "detections":
            return Kind.DETECTIONS, parts[3], None
        if len(parts) == 6 and parts[4] == "presets" and parts[5]:
            return Kind.PRESET, parts[3], parts[5]
    return Kind.NOT_FOUND, "", None


class BadRequest(Exception):
    """A request refused with ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Router:
    """Authorization of parsed requests, for one broker."""

    def __init__(self, config: Config, access: Access, hub: Hub) -> None:
        self.access = access
        self.hub = hub
        self.default_camera = config.default_camera  # served at "/" as a WebSocket
        self.cors_origins = frozenset(config.server.cors_origins)
        # Failed tokens per client address: a burst, then a trickle (then 429).
        server = config.server
        self.auth_failures = RateLimiter(server.auth_failure_rate, server.auth_failure_burst)
        self._complaints = LogThrottle(log)

    def authorize(
        self,
        method: str,
        route: Route,
        authorization: str,
        client: str,
        origin: str = "",
        host: str = "",
    ) -> tuple[Grant | Response, str]:
        """The caller's grant (or the 401/403/429 refusal) and the key that its commands
        are rate-limited by: its token, or its address when no tokens are configured.

        An address that presented more than ``server.auth_failure_burst`` wrong tokens
        may present ``server.auth_failure_rate`` more a second: until then every request
        from it gets 429, whatever its token, so guessing is slow. Signed tokens that fail
        (expired, revoked, bad signature) count as wrong tokens.

        With no tokens configured, a request whose ``Origin`` (the page that sent it) is
        neither its own (``host``) nor in ``server.cors_origins`` may not change state:
        403 for POST/PATCH/PUT/DELETE, and a ``/ws`` upgrade gets `CROSS_ORIGIN` (it may
        watch, not command). Requests without ``Origin`` (curl, scripts, a Grafana
        backend) are not pages: they pass."""
        address = client.rpartition(":")[0]
        token = request_token(authorization, route.param("token"))
        if not self.access.open and method != "OPTIONS":
            wait = self.auth_failures.wait(address)
            if wait > 0:
                self._complaints.warning(
                    "429", "client %s: too many wrong tokens; refused for %.1f s", client, wait
                )
                return auth_throttled(wait), address
        # CORS preflights carry no credentials and reveal nothing.
        identity = OPEN if method == "OPTIONS" else self.access.identify(token)
        grant = self.grant(method, route, token, identity)
        if isinstance(identity, Refused):
            if token:
                self.auth_failures.allow(address)  # spends one of the address's attempts
            self._complaints.warning(
                "401",
                "client %s: %s (%s %s)",
                client,
                identity.reason,
                method,
                redact(route.path),
            )
        elif self.access.open and not self.origin_allowed(origin, host):
            if method in UNSAFE_METHODS:
                self._complaints.warning(
                    "cross_origin",
                    "client %s: %s %s from a page of another origin refused",
                    client,
                    method,
                    redact(route.path),
                )
                grant = cross_origin_refused(method, route.path, origin)
            elif route.kind is Kind.MUX:
                grant = CROSS_ORIGIN
        key = token if token and not self.access.open else address
        return grant, key

    def origin_allowed(self, origin: str, host: str) -> bool:
        """True for no ``Origin``, the request's own (same host and port as its ``Host``
        header: one port is one server), or one of ``server.cors_origins``."""
        if not origin:
            return True
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep and host) and scheme in ("http", "https") and rest.lower() == host.lower()

    def grant(
        self, method: str, route: Route, token: str | None, identity: Grant | Refused
    ) -> Grant | Response:
        """The grant of ``token`` (its ``identity``, `Access.identify`'s answer) for this
        request, or the 401/403 answer refusing it."""
        if isinstance(identity, Refused):
            return unauthorized(token, identity.reason if token else "")
        grant = identity
        if method == "OPTIONS":
            return grant
        if route.camera and not grant.can_watch(route.camera):
            return forbidden_camera(route.camera)
        if route.kind in WRITES and not grant.operator:
            return error("forbidden", f"{method} {redact(route.path)} needs an operator token")
        if route.kind is Kind.METRICS and grant.cameras is not None:
            return error(
                "forbidden",
                "/metrics covers every camera: it needs a token that "
                "is not limited to some cameras",
            )
        return grant

    def stream_target(self, route: Route, grant: Grant) -> tuple[str, float | None]:
        """The camera and fps cap of a camera WebSocket upgrade, or `BadRequest`: 404 for
        no such endpoint or camera, 403 for a camera ``grant`` may not see."""
        camera_id = route.camera
        if route.path == "/":
            if self.default_camera is None:
                raise BadRequest(error("no_camera", "no camera is configured"))
            camera_id = self.default_camera
        elif route.kind is not Kind.WEBSOCKET:
            raise BadRequest(error("not_found", f"no WebSocket endpoint at {route.path}"))
        if camera_id not in self.hub.cameras:
            raise BadRequest(error("unknown_camera", f"no camera {camera_id!r}"))
        max_fps = fps_cap(route)
        if not grant.can_watch(camera_id):
            raise BadRequest(forbidden_camera(camera_id))
        return camera_id, max_fps


def may_command(grant: Grant, camera: str) -> str | None:
    """Why ``grant`` may not run commands on ``camera`` (for ``/ws``), or None."""
    if grant.can_control(camera):
        return None
    if grant is CROSS_ORIGIN:
        return (
            "commands from a page of another origin are refused while no tokens are "
            "configured: open the broker's own page, or list the origin in server.cors_origins"
        )
    needs = "an operator token" if not grant.operator else "access to the camera"
    return f"commands on camera {camera!r} need {needs}"


class CommandRate:
    """The command rate limit, ``control.command_rate`` a second per client: its token
    (or address) over HTTP, its connection on ``/ws``. Checked before anything else of a
    command is decided, so refused commands cost a client too."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._limiter = RateLimiter(rate)

    def allow(self, client: Hashable) -> bool:
        return self._limiter.allow(client)

    def refusal(self) -> str:
        return f"more than {self.rate:g} commands a second"


def fps_cap(route: Route) -> float | None:
    """The ``fps`` query parameter: None when absent, else `BadRequest` unless above 0
    and at most `MAX_FPS`."""
    fps = route.param("fps")
    if fps is None:
        return None
    try:
        max_fps = float(fps)
    except ValueError:
        max_fps = math.nan
    if not 0 < max_fps <= MAX_FPS:
        raise BadRequest(
            error("bad_fps", f"fps must be a number above 0 and at most 1000, got {fps!r}")
        )
    return max_fps


def unauthorized(token: str | None, reason: str = "") -> Response:
    """401 with the RFC 6750 challenge; ``error="invalid_token"`` when one was given.
    ``reason`` says why it is not valid (it never quotes the token)."""
    challenge = 'Bearer realm="camera-broker"'
    if token:
        challenge += ', error="invalid_token"'
        message = "the token is not valid" + (f": {reason}" if reason else "")
    else:
        message = "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN"
    return error("unauthorized", message, www_authenticate=challenge)


def cross_origin_refused(method: str, path: str, origin: str) -> Response:
    """403 for a state-changing request from a page of another origin (no tokens set)."""
    shown = origin if len(origin) <= 100 else origin[:100] + "..."
    return error(
        "forbidden",
        f"{method} {redact(path)} from a page of another origin ({shown!r}) is refused: "
        "with no tokens configured only the broker's own page, and the origins listed in "
        "server.cors_origins, may change state",
    )


def forbidden_camera(camera_id: str) -> Response:
    return error("forbidden", f"this token may not access camera {camera_id!r}")


def auth_throttled(wait: float) -> Response:
    """429 for an address that presented too many wrong tokens."""
    seconds = max(1, math.ceil(wait))
    return error(
        "too_many_failed_tokens",
        f"too many wrong tokens from this address; retry in {seconds} s",
        retry_after=str(seconds),
    )
