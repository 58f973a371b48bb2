"""Who may do what: bearer tokens from the config, signed tokens, and the grant each
one gives.

Pure and synchronous (but for `broker.trust.tokens` looking at its key files). The
server asks `Access.identify` for the `Grant` of a request's token (``Authorization:
Bearer T``, else ``?token=T`` for browsers and Grafana, which cannot set headers on a
WebSocket) and the grant answers `can_watch` / `can_control`. A token is one of the
static ``[[tokens]]`` (compared in constant time with every one), else, when
``security.jwt_secret_file`` or ``security.jwks_file`` is set, a signed token (JWT)
whose claims make the grant. With neither every client gets `OPEN`: the demo needs no
setup.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from broker.config import ConfigError, SecurityConfig, TokenConfig, load
from broker.trust.tokens import KeyFileError, TokenRefused, Verifier, looks_signed

OPERATOR = "operator"
VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: str  # "viewer": watch, list, stats; "operator": also commands and settings
    cameras: frozenset[str] | None = None  # the cameras it may see; None = all
    name: str = ""  # for the log; never the token itself
    expires: float | None = None  # a signed token's exp (seconds since the epoch)

    def can_watch(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def can_control(self, camera: str) -> bool:
        return self.role == OPERATOR and self.can_watch(camera)

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


OPEN = Grant(OPERATOR, None, "anyone")  # no tokens configured
# No tokens configured, and a /ws upgrade from a page of another origin: it may watch,
# but not command (a web page an operator happens to open must not change cameras).
CROSS_ORIGIN = Grant(VIEWER, None, "a page of another origin")


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a token grants nothing (shown to its bearer; never quotes the token)."""

    reason: str


MISSING = Refused("no token")
UNKNOWN = Refused("unknown token")


class Access:
    def __init__(
        self,
        tokens: Iterable[TokenConfig],
        security: SecurityConfig | None = None,
        config_file: str = "",
    ) -> None:
        """`broker.trust.tokens.KeyFileError` when a key file of ``security`` cannot be
        used (`broker.config.load` has checked them). With ``config_file`` (the file the
        config was loaded from) its ``security.revoked`` is re-read when it changes."""
        # Compared as SHA-256 digests: equal lengths, so the time says nothing of a
        # token's length either.
        self._grants = [
            (_digest(t.token), Grant(t.role, frozenset(t.cameras) or None, t.label)) for t in tokens
        ]
        self.signed: Verifier | None = None
        if security is not None and (security.jwt_secret_file or security.jwks_file):
            self.signed = Verifier(
                security.jwt_secret_file,
                security.jwks_file,
                security.revoked,
                security.clock_skew,
                (config_file, revoked_ids) if config_file else None,
            )

    @property
    def open(self) -> bool:
        """True when no tokens are configured: everyone may do everything."""
        return not self._grants and self.signed is None

    def check(self, token: str | None) -> Grant | None:
        """The grant of ``token``; None when it is missing or not valid (answer 401)."""
        found = self.identify(token)
        return found if isinstance(found, Grant) else None

    def valid(self, token: str) -> bool:
        """True while ``token`` grants something (a stream re-checks its signed token)."""
        return isinstance(self.identify(token), Grant)

    def identify(self, token: str | None) -> Grant | Refused:
        """The grant of ``token``, or why it has none."""
        if self.open:
            return OPEN
        if not token:
            return MISSING
        given = _digest(token)
        found: Grant | Refused = UNKNOWN
        for known, grant in self._grants:  # compare with every token, in constant time
            if hmac.compare_digest(known, given):
                found = grant
        if found is UNKNOWN and self.signed is not None and looks_signed(token):
            try:
                claims = self.signed.verify(token)
            except TokenRefused as refused:
                return Refused(f"signed token refused: {refused.reason}")
            return Grant(claims.role, claims.cameras, claims.name, claims.expires)
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def revoked_ids(config_file: str) -> frozenset[str]:
    """``security.revoked`` of a config file, which must be valid as a whole."""
    try:
        return frozenset(load(config_file).security.revoked)
    except ConfigError as exc:
        problem = f"not a valid config ({len(exc.errors)} error(s): {exc.errors[0]})"
        raise KeyFileError(problem) from None


def request_token(authorization: str, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer T``, else the ``token`` query
    parameter, else None."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query_token or None
