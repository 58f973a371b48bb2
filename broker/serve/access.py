"""Who may do what: bearer tokens from the config and the grant each one gives.

Pure and synchronous. The server asks `Access.check` for the `Grant` of a request's
token (``Authorization: Bearer T``, else ``?token=T`` for browsers and Grafana, which
cannot set headers on a WebSocket) and the grant answers `can_watch` / `can_control`.
With no ``[[tokens]]`` in the config every client gets `OPEN`: the demo needs no setup.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from broker.config import TokenConfig

OPERATOR = "operator"
VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: str  # "viewer": watch, list, stats; "operator": also commands and settings
    cameras: frozenset[str] | None = None  # the cameras it may see; None = all
    name: str = ""  # for the log; never the token itself

    def can_watch(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def can_control(self, camera: str) -> bool:
        return self.role == OPERATOR and self.can_watch(camera)

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


OPEN = Grant(OPERATOR, None, "anyone")  # no tokens configured


class Access:
    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._grants = [
            (t.token.encode(), Grant(t.role, frozenset(t.cameras) or None, t.label)) for t in tokens
        ]

    @property
    def open(self) -> bool:
        """True when no tokens are configured: everyone may do everything."""
        return not self._grants

    def check(self, token: str | None) -> Grant | None:
        """The grant of ``token``; None when it is missing or unknown (answer 401)."""
        if self.open:
            return OPEN
        if not token:
            return None
        given = token.encode()
        found = None
        for known, grant in self._grants:  # compare with every token, in constant time
            if hmac.compare_digest(known, given):
                found = grant
        return found


def request_token(authorization: str, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer T``, else the ``token`` query
    parameter, else None."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query_token or None
