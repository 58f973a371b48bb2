"""``broker share CAMERA``: links to one camera that carry a fresh signed token.

`links` is pure: from a `Config`, a camera, a token and the broker's public URL it builds
the viewer page, the per-camera WebSocket (the Grafana Live Image Panel's ``wsUrl``), the
MJPEG stream and the snapshot URLs. `run` issues the token (HS256 with
``security.jwt_secret_file``, a random ``jti`` so that it can be revoked) and prints them.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys
from urllib.parse import quote

from broker.config import Config
from broker.grafana import public_base, ws_base
from broker.trust.tokens import KeyFileError, issue, parse_ttl, read_secret

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def default_public_url(config: Config) -> str:
    """The broker's URL from ``server.listen`` (https with ``server.tls_cert``); a
    wildcard address becomes this machine's host name."""
    host, port = config.server.host, config.server.port
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.server.tls_cert else "http"
    return f"{scheme}://{host}:{port}"


def links(camera: str, token: str, public_url: str) -> dict[str, str]:
    """The URLs of one camera for a token; ValueError for a bad ``public_url``."""
    base, ws = public_base(public_url), ws_base(public_url)
    query = "?token=" + quote(token, safe="")
    path = "/cameras/" + quote(camera, safe="")
    return {
        "viewer": f"{base}/{query}",
        "websocket": f"{ws}{path}{query}",
        "mjpeg": f"{base}{path}/mjpeg{query}",
        "snapshot": f"{base}{path}/snapshot.jpg{query}",
    }


def run(
    config: Config,
    camera: str,
    role: str,
    ttl_text: str,
    public_url: str | None,
    as_json: bool = False,
) -> int:
    """The ``broker share`` command once the config is loaded; returns the exit code."""
    problem = _problem(config, camera)
    if problem:
        print(f"broker share: {problem}", file=sys.stderr)
        return 2
    try:
        ttl = parse_ttl(ttl_text)
    except ValueError as exc:
        print(f"--ttl: {exc}", file=sys.stderr)
        return 2
    url = public_url or default_public_url(config)
    try:
        public_base(url)
    except ValueError as exc:
        print(f"--public-url: {exc}", file=sys.stderr)
        return 2
    try:
        secret = read_secret(config.security.jwt_secret_file)
    except KeyFileError as exc:  # changed since the config was checked
        print(f"security.jwt_secret_file: {exc}", file=sys.stderr)
        return 2
    token, claims = issue(secret, role, [camera], ttl, subject=f"share:{camera}")
    urls = links(camera, token, url)
    expires = dt.datetime.fromtimestamp(claims.expires, dt.UTC)
    if as_json:
        shown = {**urls, "jti": claims.jti, "expires": expires.isoformat(), "token": token}
        print(json.dumps(shown, indent=2))
        return 0
    print(
        f"Camera {camera!r}, role {role}, valid until {expires:%Y-%m-%d %H:%M:%S} UTC, "
        f"token id (jti) {claims.jti}"
    )
    print(f"  viewer page  {urls['viewer']}")
    print(f"  WebSocket    {urls['websocket']}")
    print(f"  MJPEG        {urls['mjpeg']}")
    print(f"  snapshot     {urls['snapshot']}")
    print(
        f'Revoke this link: add "{claims.jti}" to [security] revoked in the config.\n'
        "Revoke every link: write a new secret into security.jwt_secret_file.\n"
        "(A running broker takes either within a second, without a restart.)"
    )
    if not public_url:
        print(
            f"(Base URL from server.listen: {url}; pass --public-url if viewers reach the "
            "broker by another name.)"
        )
    return 0


def _problem(config: Config, camera: str) -> str:
    if not config.security.jwt_secret_file:
        return (
            "needs [security] jwt_secret_file (a file of 32 or more random bytes, e.g. "
            "`openssl rand -hex 32 > jwt.secret`): share links carry tokens signed with it"
        )
    known = [c.id for c in config.cameras]
    if camera not in known and not config.ingest.accept_unknown_cameras:
        listed = ", ".join(known) if known else "there are none"
        return f"no camera {camera!r} in the config ({listed})"
    return ""
