"""Signed, expiring tokens (JWT) besides the static ``[[tokens]]``: checked here for the
server, issued here for ``broker share``; and the redaction that keeps any token out of
the log.

Two ways to sign, each enabled by its key file (``[security]``):

- HS256 with the secret in ``jwt_secret_file`` (the file's bytes, surrounding whitespace
  stripped, at least `MIN_SECRET_BYTES`): what ``broker share`` issues, or any site that
  shares the secret (a Django view, say).
- RS256 or ES256 with the public keys of ``jwks_file`` (a JWKS, as identity providers
  publish it), each token's key chosen by the ``kid`` of its header.

The algorithms are an explicit allow-list, decided by which key files are set: never
``none``, and HS256 only with the secret, never with a JWKS key (the classic confusion of
signing HS256 with a public key). Claims: ``role`` (viewer/operator), ``cameras`` (a
list; absent or empty = all), ``exp`` (required), optional ``nbf``, ``jti`` (refused when
listed in ``security.revoked``) and ``sub`` (the token's name in the log). ``exp`` and
``nbf`` are checked with ``security.clock_skew`` of leeway.

Both key files are read again when they change (looked at no more than once a second,
when a token is checked): rotating the secret revokes every token signed with the old
one, without a restart. So is the ``revoked`` list, when the server is given its config
file: adding a ``jti`` there takes effect within a second, without a restart (the rest
of the config is not reloaded).

Pure but for reading the two files; synchronous.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import jwt

log = logging.getLogger("broker.trust")

HMAC_ALGORITHMS = ("HS256",)  # with security.jwt_secret_file
PUBLIC_ALGORITHMS = ("RS256", "ES256")  # with security.jwks_file
ROLES = ("viewer", "operator")
MIN_SECRET_BYTES = 32
MAX_TOKEN = 8 * 1024  # longer "tokens" are refused before any decoding
MAX_KEY_FILE = 1024 * 1024
MAX_NAME = 64
RECHECK_EVERY = 1.0  # seconds between looks at a key file for a change
CACHE_SIZE = 4096  # valid tokens remembered (a full check costs 0.1-0.5 ms)
MAX_TTL = 366 * 86400.0  # what broker share issues at most

T = TypeVar("T")


class TokenRefused(Exception):
    """A signed token that grants nothing; ``reason`` may be shown to its bearer (it never
    quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file that cannot be used: the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid signed token grants."""

    role: str
    cameras: frozenset[str] | None  # None = every camera
    expires: float  # its exp, seconds since the epoch
    jti: str  # "" when it has none (it cannot be revoked by id then)
    name: str  # for the log: "signed token SUB" or its jti; never the token


# --- key files ---


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The HS256 secret held in ``path``; `KeyFileError` if unreadable or too short."""
    data = _read(path).strip()
    if len(data) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"holds {len(data)} bytes; a secret needs at least {MIN_SECRET_BYTES} "
            "(e.g. `openssl rand -hex 32 > FILE`)"
        )
    return data


def read_jwks(path: str | os.PathLike[str]) -> dict[str, jwt.PyJWK]:
    """The public signing keys of the JWKS in ``path``, by ``kid`` ("" for a single key
    without one); `KeyFileError` says what is wrong."""
    try:
        document = json.loads(_read(path))
    except ValueError as exc:  # also UnicodeDecodeError
        raise KeyFileError(f"is not JSON: {exc}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise KeyFileError('must be a JWKS: {"keys": [ ...public keys... ]}')
    found: dict[str, jwt.PyJWK] = {}
    for i, data in enumerate(keys):
        if not isinstance(data, dict):
            raise KeyFileError(f"keys[{i}] must be an object")
        kid = data.get("kid", "")
        if not isinstance(kid, str) or (not kid and len(keys) > 1):
            raise KeyFileError(f"keys[{i}] needs a kid (a string): the file has several keys")
        if data.get("kty") not in ("RSA", "EC"):
            raise KeyFileError(f"keys[{i}]: only RSA and EC public keys are accepted")
        if "d" in data:
            raise KeyFileError(f"keys[{i}] holds a private key: give only the public keys")
        if data.get("use", "sig") != "sig":
            raise KeyFileError(f"keys[{i}] is not a signing key (use {data.get('use')!r})")
        try:
            key = jwt.PyJWK(data)
        except jwt.PyJWKError as exc:
            raise KeyFileError(f"keys[{i}]: {exc}") from None
        if key.algorithm_name not in PUBLIC_ALGORITHMS:
            raise KeyFileError(
                f"keys[{i}]: algorithm {key.algorithm_name} is not one of "
                f"{', '.join(PUBLIC_ALGORITHMS)}"
            )
        if kid in found:
            raise KeyFileError(f"keys[{i}]: kid {kid!r} is given twice")
        found[kid] = key
    return found


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"is larger than {MAX_KEY_FILE} bytes")
    return data


class KeyFile(Generic[T]):
    """A file read at start, and again when it changes (size, time or inode): looked at
    no more often than every `RECHECK_EVERY` seconds. A changed file that cannot be used
    is logged and what it held stays in force until it can. ``what`` names its content
    in the log."""

    def __init__(
        self,
        path: str,
        read: Callable[[str], T],
        clock: Callable[[], float] = time.monotonic,
        what: str = "its keys",
    ) -> None:
        self.path = path
        self.what = what
        self._read = read
        self._clock = clock
        self._stamp = self._stat()
        self.value = read(path)  # KeyFileError at start: the broker does not start
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def current(self) -> T:
        now = self._clock()
        if now - self._checked < RECHECK_EVERY:
            return self.value
        self._checked = now
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                self.value = self._read(self.path)
            except KeyFileError as exc:
                log.error(
                    "%s changed but cannot be used: %s; keeping %s as they were",
                    self.path,
                    exc,
                    self.what,
                )
            else:
                log.info("%s changed: %s are in force now", self.path, self.what)
            self._stamp = stamp
        return self.value


# --- checking ---


class Verifier:
    """Checks signed tokens against the configured keys, revoked ids and clock skew."""

    def __init__(
        self,
        secret_file: str = "",
        jwks_file: str = "",
        revoked: Iterable[str] = (),
        clock_skew: float = 30.0,
        revoked_source: tuple[str, Callable[[str], frozenset[str]]] | None = None,
    ) -> None:
        """Reads the key files: `KeyFileError` when one cannot be used. With
        ``revoked_source`` (a file, and how to read the revoked ids from it) the revoked
        ids are that file's, re-read when it changes; else ``revoked``."""
        self.secret = KeyFile(secret_file, read_secret) if secret_file else None
        self.jwks = KeyFile(jwks_file, read_jwks) if jwks_file else None
        self._revoked = frozenset(revoked)
        self._revoked_file: KeyFile[frozenset[str]] | None = None
        if revoked_source is not None:
            path, read = revoked_source
            try:
                self._revoked_file = KeyFile(path, read, what="the revoked token ids")
            except KeyFileError as exc:  # changed since it was loaded: keep what was loaded
                log.error("%s: %s; the revoked ids are read at start only", path, exc)
        self.clock_skew = clock_skew
        self._cache: dict[str, tuple[Claims, tuple[object, object]]] = {}

    @property
    def revoked(self) -> frozenset[str]:
        """The ids (jti) refused now."""
        return self._revoked_file.current() if self._revoked_file else self._revoked

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms accepted, by which key files are set."""
        return (HMAC_ALGORITHMS if self.secret else ()) + (PUBLIC_ALGORITHMS if self.jwks else ())

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; `TokenRefused` with the reason otherwise.

        Valid tokens are remembered (at most `CACHE_SIZE`) with the keys they were
        checked with: a token seen again (a viewer's next request, a stream's re-check)
        costs a dictionary look-up, its expiry and the revoked list, until a key file
        changes."""
        keys = self._keys()
        cached = self._cache.get(token)
        if cached is not None and all(a is b for a, b in zip(cached[1], keys, strict=True)):
            claims = cached[0]
            if time.time() > claims.expires + self.clock_skew:
                del self._cache[token]
                raise TokenRefused("expired")
            if claims.jti and claims.jti in self.revoked:
                raise TokenRefused("revoked")
            return claims
        claims = self._verify(token)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()  # simple and bounded: valid tokens are re-checked once
        self._cache[token] = (claims, keys)
        return claims

    def _keys(self) -> tuple[object, object]:
        """The key material in force now (objects replaced when a file changes)."""
        return (
            self.secret.current() if self.secret else None,
            self.jwks.current() if self.jwks else None,
        )

    def _verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN:
            raise TokenRefused(f"longer than {MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRefused("not a signed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            shown = repr(algorithm) if algorithm in KNOWN else "(other)"
            raise TokenRefused(
                f"algorithm {shown} is not accepted (accepted: {', '.join(self.algorithms)})"
            )
        key = self._key(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=self.clock_skew,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("the signature does not match") from None
        except jwt.MissingRequiredClaimError:
            raise TokenRefused("it has no exp: signed tokens must expire") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("it names an audience (aud); the broker accepts none") from None
        except jwt.InvalidTokenError:
            raise TokenRefused("malformed") from None
        return self._grant(claims)

    def _key(self, algorithm: str, kid: object) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            assert self.secret is not None
            return self.secret.current()
        assert self.jwks is not None
        keys = self.jwks.current()
        if kid is None and len(keys) == 1:
            kid = next(iter(keys))
        found = keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise TokenRefused("no key in security.jwks_file has its kid")
        if found.algorithm_name != algorithm:
            raise TokenRefused(f"its key is for {found.algorithm_name}, not {algorithm}")
        return found.key

    def _grant(self, claims: dict[str, Any]) -> Claims:
        jti = claims.get("jti", "")
        if not isinstance(jti, str):
            raise TokenRefused("jti must be a string")
        if jti and jti in self.revoked:
            raise TokenRefused("revoked")
        role = claims.get("role")
        if role not in ROLES:
            raise TokenRefused("its role claim must be viewer or operator")
        cameras = claims.get("cameras", [])
        if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
            raise TokenRefused("its cameras claim must be a list of camera ids")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise TokenRefused("sub must be a string")
        label = subject or (f"jti {jti}" if jti else "")
        name = "signed token " + printable(label) if label else "a signed token"
        return Claims(role, frozenset(cameras) or None, float(claims["exp"]), jti, name)


KNOWN = ("none", *HMAC_ALGORITHMS, *PUBLIC_ALGORITHMS, "HS384", "HS512", "RS512", "PS256")


def printable(text: str) -> str:
    """``text`` safe for a log line: letters, digits and a few signs, at most `MAX_NAME`."""
    return re.sub(r"[^\w.@:+/-]", "?", text)[:MAX_NAME]


def looks_signed(token: str) -> bool:
    """A JWT's shape: three dot-separated parts."""
    return token.count(".") == 2


# --- issuing (broker share) ---


def issue(
    secret: bytes,
    role: str,
    cameras: Iterable[str],
    ttl: float,
    subject: str = "",
    now: float | None = None,
) -> tuple[str, Claims]:
    """A fresh HS256 token with a random jti, and what it grants."""
    issued = math.floor(time.time() if now is None else now)
    jti = secrets.token_urlsafe(12)
    expires = issued + math.ceil(ttl)
    payload: dict[str, Any] = {
        "role": role,
        "cameras": sorted(cameras),
        "iat": issued,
        "exp": expires,
        "jti": jti,
    }
    if subject:
        payload["sub"] = subject
    token = jwt.encode(payload, secret, algorithm="HS256")
    name = "signed token " + printable(subject or f"jti {jti}")
    return token, Claims(role, frozenset(cameras) or None, float(expires), jti, name)


DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> float:
    """Seconds from "90", "90s", "30m", "8h", "2d" or "1w"; ValueError says what is wrong."""
    match = DURATION.fullmatch(text.strip().lower())
    seconds = float(match.group(1)) * UNITS[match.group(2)] if match else 0.0
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(
            f"must be a duration such as 30m, 8h or 7d, above 0 and at most 366d, got {text!r}"
        )
    return seconds


# --- keeping tokens out of the log ---

TOKEN_PARAM = re.compile(r"(?i)\b((?:access_)?token=)[^&\s#'\"]*")
BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\"]+")
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every ``token=...`` value, bearer credential and JWT-shaped string
    replaced by ``[redacted]``."""
    if "token=" not in text.lower() and "bearer" not in text.lower() and "eyJ" not in text:
        return text
    text = TOKEN_PARAM.sub(r"\1" + REDACTED, text)
    text = BEARER.sub(r"\1" + REDACTED, text)
    return JWT_SHAPE.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A handler filter: every record's message goes out through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
